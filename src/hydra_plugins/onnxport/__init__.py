"""Hydra plugin package: registers onnxport's ``ExportConfig`` schema in the ConfigStore.

Hydra imports every module under the ``hydra_plugins`` namespace when it starts, in any
process: ``onnxport export``, a user's own ``@hydra.main`` script, and DVC composing ``conf/``
into ``params.yaml`` during ``dvc exp run``. So a ``conf/`` that lists
``/onnxport/export_schema@_here_`` composes everywhere. Importing this costs no torch.
"""

from onnxport.cli import register_configs

register_configs()
