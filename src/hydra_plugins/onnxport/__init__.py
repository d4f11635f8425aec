"""Hydra plugin package: registers onnxport's configs in Hydra's ConfigStore.

Hydra imports every module under the ``hydra_plugins`` namespace when it starts, in any
process: ``onnxport export``, a user's own ``@hydra.main`` script, and DVC composing ``conf/``
into ``params.yaml`` during ``dvc exp run``. So a config that lists
``/onnxport/export_schema@_here_``, or ``onnx_export`` in its callbacks defaults, composes
everywhere. Importing this costs no torch.
"""

from onnxport.hydra_config import register_configs

register_configs()
