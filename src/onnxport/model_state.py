"""The model's own state around an export: eval mode in, the caller's flags back out.

``preserved_state`` is entered once per export (by :func:`onnxport.workflow.export`, or by
:func:`onnxport.validate` when it is called on its own); ``probe`` is the one eager call
whose output structure names the graph outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from onnxport.errors import InputError, one_line

if TYPE_CHECKING:
    from onnxport.inputs import ModelInputs


_held: set[int] = set()  # ids of the models inside a preserved_state now


@contextlib.contextmanager
def preserved_state(model: Any) -> Iterator[None]:
    """Export in eval mode and give the caller back every submodule's training flag and grad flags.

    Entered once per export: a nested entry for the same model (``validate`` or ``run_exporter``
    called inside ``export``) does nothing, so the flags saved are the caller's.
    """
    import torch

    if not isinstance(model, torch.nn.Module) or id(model) in _held:
        yield
        return
    _held.add(id(model))
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    model.eval()
    from onnxport.conventions import exporting

    try:
        with exporting(model):  # a transformers model's use_cache/return_dict, restored as the flags are
            yield
    finally:
        _held.discard(id(model))
        for module, training in modes:
            module.training = training
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)


def probe(model: Any, inputs: ModelInputs) -> Any:
    """One eager call: the output structure names the outputs; a failure here is the inputs' fault."""
    from onnxport.inputs import forward_signature

    try:
        return inputs.call(model)
    except Exception as error:
        shapes = ", ".join(f"{name}{tuple(shape)}" for name, shape in inputs.shapes().items())
        raise InputError(
            f"{type(model).__name__} raised {type(error).__name__} on the example inputs ({shapes}): "
            f"{one_line(error)}",
            fix=f"pass example inputs that forward{forward_signature(model)} accepts",
        ) from error
