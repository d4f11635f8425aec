"""Conventions of Hugging Face transformers models, the defaults Optimum's exporter gives them.

A ``transformers.PreTrainedModel`` is exported as a tokenizer's batch feeds it:

- text inputs (``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``, ...) get a
  dynamic ``sequence`` axis 1 beside the ``batch`` axis 0 (``decoder_*`` inputs ``decoder_sequence``);
- ``use_cache=False``: no past key values in or out, unless the example inputs pass ``use_cache`` or a
  cache (:func:`exporting` sets it on the configs for the export, then restores them; also for a
  transformers model inside a wrapper, such as a LightningModule);
- ``return_dict=True``: outputs are named from the ``ModelOutput`` fields (``last_hidden_state``,
  ``logits``, ...), which :func:`onnxport.inputs.flatten_outputs` reads as from any mapping.

The sequence axis is tried with the batch in :func:`onnxport.inputs.probed_axes`' one eager call; a
model that refuses a shorter text (labels of the example's length) keeps it static, said in one line.

Known limit: a causal model fed a left-padded mask has query rows that attend to nothing. Eager
PyTorch returns 0 there, the exported graph the mean of the values, so validation fails at the padded
positions of the example itself (max differences 0.05-4). Right padding, and any padding in a
bidirectional encoder, validate.

What the user set wins: an ``export.dynamic_axes`` entry replaces the convention's axes of that
name, and a keyword in the example inputs is never overridden.

Nothing here imports transformers: a model is recognised by the names of its classes, and only
then is its ``config`` read. Plain-PyTorch users pay nothing for this module.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

SEQUENCE_AXIS_NAME = "sequence"

# The inputs a tokenizer produces, and the ids/masks a model derives from them: axis 1 is the sequence.
TEXT_INPUTS = frozenset(
    {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "position_ids",
        "inputs_embeds",
        "decoder_input_ids",
        "decoder_attention_mask",
        "decoder_position_ids",
        "decoder_inputs_embeds",
    }
)


def is_transformers_model(model: Any) -> bool:
    """``model`` is a transformers ``PreTrainedModel``, told without importing transformers.

    >>> import torch
    >>> is_transformers_model(torch.nn.Linear(2, 2))
    False
    """
    if "transformers" not in sys.modules:  # nothing imported it, so no model can be one
        return False
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
        for cls in type(model).__mro__
    )


def vocab_size(model: Any) -> int | None:
    """``model.config.vocab_size`` (or its text config's), for any model that has one."""
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if size is None and callable(getattr(config, "get_text_config", None)):
        try:
            size = getattr(config.get_text_config(), "vocab_size", None)
        except Exception:  # a config without a text part: no vocabulary to respect
            size = None
    return size if isinstance(size, int) and size > 0 else None


def is_token_ids(name: str) -> bool:
    """``input_ids``, ``decoder_input_ids``, ``batch.input_ids``: indices into the vocabulary."""
    return name.rsplit(".", 1)[-1].endswith("input_ids")


@contextlib.contextmanager
def exporting(model: Any) -> Iterator[None]:
    """Transformers configs as an export needs them, and the caller's back afterwards.

    ``use_cache=False`` on every transformers model in ``model`` (itself, or one a wrapper calls):
    a cache is an object ONNX cannot return, and a decoder-only LM is exported without past key
    values (a ``use_cache`` or cache argument still wins: an argument beats the config).
    ``return_dict=True`` on ``model`` itself, so its outputs are ``ModelOutput``s named by their
    fields; a wrapper's own code may unpack tuples, so the models it calls keep theirs. Set on the
    config rather than passed as keywords, because a constant keyword becomes an argument the
    exporters must thread through (torch.onnx stops naming dynamic axes when ``dynamic_shapes``
    holds a non-tensor entry, and the TorchScript exporter takes no bools).
    """
    wanted: dict[int, tuple[Any, dict[str, bool]]] = {}  # by config: models may share one
    modules = model.modules() if "transformers" in sys.modules and hasattr(model, "modules") else ()
    for module in modules:
        config = getattr(module, "config", None)
        if config is not None and is_transformers_model(module):
            settings = wanted.setdefault(id(config), (config, {}))[1]
            settings.update({"use_cache": False, **({"return_dict": True} if module is model else {})})
    saved = [
        (config, key, getattr(config, key))
        for config, settings in wanted.values()
        for key in settings
        if hasattr(config, key)
    ]
    for config, key, _ in saved:
        setattr(config, key, wanted[id(config)][1][key])
    try:
        yield
    finally:
        for config, key, value in reversed(saved):
            setattr(config, key, value)


def padded_positions(model: Any, names: list[str], tensors: list[Any]) -> Any:
    """Where a transformers model's ``attention_mask`` is 0: a ``(batch, sequence)`` bool array, or ``None``.

    No caller reads the outputs at padded positions, and they need not agree: a causal model's
    left-padded rows attend to no token at all, where eager attention gives 0 and the exported
    graph the mean of the values. Validation leaves them out of the comparison.
    """
    if not any(is_transformers_model(module) for module in _modules(model)):
        return None
    for name, tensor in zip(names, tensors, strict=True):
        if name.rsplit(".", 1)[-1] == "attention_mask" and tensor.dim() == 2:
            padded = (tensor == 0).cpu().numpy()
            return padded if padded.any() else None
    return None


def _modules(model: Any) -> Iterator[Any]:
    yield model
    if "transformers" in sys.modules and hasattr(model, "modules"):
        yield from model.modules()


def sequence_axes(model: Any, names: list[str], ranks: list[int]) -> dict[str, str]:
    """``{input name: axis-1 name}`` for the text inputs of a transformers model (rank 2 or more)."""
    if not is_transformers_model(model):
        return {}
    axes: dict[str, str] = {}
    for name, rank in zip(names, ranks, strict=True):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in TEXT_INPUTS and rank >= 2:
            axes[name] = (
                f"decoder_{SEQUENCE_AXIS_NAME}" if leaf.startswith("decoder_") else SEQUENCE_AXIS_NAME
            )
    return axes
