"""Conventions of Hugging Face transformers models, the defaults Optimum's exporter gives them.

A ``transformers.PreTrainedModel`` is exported as a tokenizer's batch feeds it:

- text inputs (``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``, ...) get a
  dynamic ``sequence`` axis 1 beside the ``batch`` axis 0 (``decoder_*`` inputs ``decoder_sequence``);
- ``use_cache=False``: no past key values in or out, unless the example inputs pass ``use_cache`` or a
  cache (:func:`exporting` sets it on the model's config for the export, then restores it);
- outputs are named from the ``ModelOutput`` fields (``last_hidden_state``, ``logits``, ...), which
  :func:`onnxport.inputs.flatten_outputs` reads from the output as it does for any mapping.

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
    """A transformers model's config as an export needs it, and the caller's back afterwards.

    ``use_cache=False``: a cache is an object ONNX cannot return, and a decoder-only LM is
    exported without past key values (a ``use_cache`` or cache argument in the example inputs
    still wins: an argument beats the config). ``return_dict=True``: outputs are ``ModelOutput``s
    named by their fields. Set on the config rather than passed as keywords, because a constant
    keyword becomes an argument the exporters must thread through (torch.onnx stops naming
    dynamic axes when ``dynamic_shapes`` holds a non-tensor entry, and the TorchScript exporter
    takes no bools).
    """
    config = getattr(model, "config", None) if is_transformers_model(model) else None
    wanted = {"use_cache": False, "return_dict": True}
    saved = {key: getattr(config, key) for key in wanted if hasattr(config, key)}
    for key in saved:
        setattr(config, key, wanted[key])
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(config, key, value)


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
