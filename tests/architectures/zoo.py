"""Architectures nobody here wrote, built from tiny configs with random weights (no download).

Each is exported three ways, and every file is checked in ONNX Runtime against eager PyTorch on
inputs the export never saw:

* ``onnxport``: ``onnxport.export(model, example, path)`` with defaults (validation included);
* ``dynamo`` and ``torchscript``: the bare ``torch.onnx.export`` calls a careful user writes, with
  the dynamic axes the model really has.

:func:`outcome` returns what happened to each, as JSON-ready dicts; ``python run_one.py NAME`` prints
it (the detection model needs torchvision, so it runs under ``.venv-vision/bin/python``), and
``benchmarks/architectures.py`` times the same builders.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED = 0
VOCAB = 99


@dataclass
class Architecture:
    """A model, its example inputs, other inputs to check against, and its real dynamic axes."""

    model: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    other_args: tuple[Any, ...]
    other_kwargs: dict[str, Any]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    """What a careful user marks dynamic in a bare export, by input name."""
    names: list[str] = field(default_factory=list)
    """Input names for the bare exports (one per tensor leaf)."""
    differs: Callable[[list[Any], list[Any]], str | None] | None = None
    """How the file's outputs and eager PyTorch's (numpy) differ, where position-wise is wrong."""


# -- builders ---------------------------------------------------------------------------------


def _token_batch(batch: int, length: int, left: bool = False) -> dict[str, Any]:
    """Token ids below the vocabulary and a padded mask, as a tokenizer makes them (rows of ones
    followed by zeros; ``left`` pads on the left); the first row is never padded."""
    import torch

    ids = torch.randint(3, VOCAB, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        pad = (row * 2) % max(length - 1, 1)
        if pad:
            if left:
                mask[row, :pad] = 0
            else:
                mask[row, length - pad :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _text(model: Any, left: bool = False, extra: Callable[[dict], dict] | None = None) -> Architecture:
    example, other = _token_batch(2, 8, left), _token_batch(3, 11, left)
    if extra is not None:
        example, other = extra(example), extra(other)
    axes = {name: {0: "batch", 1: "sequence"} for name in example}
    return Architecture(model.eval(), (), example, (), other, axes, list(example))


def clip_text() -> Architecture:
    """Causal text encoder whose pooled output reads the end-of-text token; right-padded masks."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        eos_token_id=2,
    )
    return _text(CLIPTextModel(config))


def t5_encoder() -> Architecture:
    """T5's encoder: relative position buckets that the dynamo exporter cannot capture."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, use_cache=False
    )
    return _text(T5EncoderModel(config))


def bert() -> Architecture:
    """BERT with token type ids: keyword inputs after which transformers re-injects ``use_cache``."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )

    def types(batch: dict) -> dict:
        import torch

        token_types = torch.zeros_like(batch["input_ids"])
        token_types[:, batch["input_ids"].shape[1] // 2 :] = 1  # a second segment
        return {**batch, "token_type_ids": token_types}

    return _text(BertModel(config), extra=types)


def llama_lm() -> Architecture:
    """A decoder-only LM (Llama) with ``use_cache=False``, right-padded as for scoring a batch.

    (Left-padded, the padding's own positions attend to nothing: there eager PyTorch and the
    exported graph differ, but nobody reads those positions; :func:`check_file` skips them.)
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_cache=False,
    )
    return _text(LlamaForCausalLM(config))


def ssdlite() -> Architecture:
    """torchvision's SSDlite detector (with ``nms``): a list of 3xHxW images, no batch axis."""
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    _spread(model)
    images = [torch.rand(3, 320, 320)]
    others = [torch.rand(3, 320, 320)]
    return Architecture(model.eval(), (images,), {}, (others,), {}, {}, ["images"], _other_detections)


def _other_detections(got: list[Any], eager: list[Any]) -> str | None:
    """Detections (boxes, scores, labels) compared as a set: near-equal scores may swap places."""
    import numpy as np

    (boxes, scores, labels), (their_boxes, their_scores, their_labels) = got, eager
    if len(scores) != len(their_scores):
        return f"{len(scores)} detections in ONNX Runtime, {len(their_scores)} in PyTorch"
    unmatched = list(range(len(their_scores)))
    for index, (box, score, label) in enumerate(zip(boxes, scores, labels, strict=True)):
        match = next(
            (
                j
                for j in unmatched
                if their_labels[j] == label
                and abs(their_scores[j] - score) <= 1e-4 + 1e-3 * abs(score)
                and np.allclose(their_boxes[j], box, atol=1e-3, rtol=1e-4)
            ),
            None,
        )
        if match is None:
            return f"detection {index} (label {label}, score {score:.4g}) is not among PyTorch's"
        unmatched.remove(match)
    return None


def _spread(model: Any) -> None:
    """Random weights that give distinct scores. As initialised, SSDlite's features hardly depend
    on the image (batch norm statistics of 0 and 1 shrink them away), every anchor of a shape
    scores the same, and which of the tied detections make the top 300 is arbitrary: no two
    runs could agree. Batch norm statistics measured on noise images fix that."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration batches
        model.backbone.train()
        for _ in range(2):
            model.backbone(torch.rand(4, 3, 320, 320))
        model.backbone.eval()
        for parameter in model.head.classification_head.parameters():
            parameter.normal_(0, 0.2)
        for parameter in model.head.regression_head.parameters():
            parameter.normal_(0, 0.01)  # boxes stay near their anchors: distinct, inside the image


BUILDERS: dict[str, Callable[[], Architecture]] = {
    "clip-text": clip_text,
    "t5-encoder": t5_encoder,
    "bert": bert,
    "llama-lm": llama_lm,
    "ssdlite": ssdlite,
}
VISION = ("ssdlite",)
"""Built with torchvision: they run under .venv-vision."""


def build(name: str) -> Architecture:
    import torch

    torch.manual_seed(SEED)
    return BUILDERS[name]()


# -- the three ways to export -----------------------------------------------------------------


def export_onnxport(arch: Architecture, path: Path) -> Any:
    import onnxport

    example = arch.kwargs if arch.kwargs else arch.args
    return onnxport.export(arch.model, example, path)


def export_dynamo(arch: Architecture, path: Path) -> None:
    import torch

    torch.onnx.export(
        arch.model,
        arch.args,
        str(path),
        kwargs=arch.kwargs,
        dynamo=True,
        input_names=arch.names,
        dynamic_shapes=dict(arch.dynamic) if arch.dynamic else None,
        external_data=True,
    )


def export_torchscript(arch: Architecture, path: Path) -> None:
    import torch

    # keyword arguments go in a trailing dict, as torch.onnx documents
    args = (*arch.args, arch.kwargs) if arch.kwargs else arch.args
    torch.onnx.export(
        arch.model,
        args,
        str(path),
        dynamo=False,
        input_names=arch.names,
        dynamic_axes=arch.dynamic or None,
    )


EXPORTERS = {"onnxport": export_onnxport, "dynamo": export_dynamo, "torchscript": export_torchscript}


# -- the independent check --------------------------------------------------------------------


def leaves(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    from torch.utils._pytree import tree_leaves

    return [leaf.numpy() for leaf in tree_leaves((args, kwargs))]


def check_file(arch: Architecture, path: Path) -> str | None:
    """``None`` when the file computes what eager PyTorch computes on the other inputs (or, where the
    file's axes are static, on fresh values of the example's shape); else what differs."""
    import numpy as np
    import onnxruntime
    import torch
    from torch.utils._pytree import tree_leaves

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph_inputs = session.get_inputs()
    args, kwargs = arch.other_args, arch.other_kwargs
    values = leaves(args, kwargs)
    if not _fits(graph_inputs, values):
        args, kwargs = _fresh_like(arch)
        values = leaves(args, kwargs)
    if len(values) != len(graph_inputs):
        return f"the file has {len(graph_inputs)} inputs for {len(values)} tensors"
    with torch.no_grad():
        eager = [t.numpy() for t in tree_leaves(arch.model(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    got = session.run(None, {i.name: v for i, v in zip(graph_inputs, values, strict=True)})
    if len(got) != len(eager):
        return f"the file returns {len(got)} outputs, eager PyTorch {len(eager)}"
    if arch.differs is not None:
        return arch.differs(got, eager)
    mask = kwargs.get("attention_mask")
    for index, (ours, theirs) in enumerate(zip(got, eager, strict=True)):
        if ours.shape != theirs.shape:
            return f"output {index}: shape {ours.shape} in ONNX Runtime, {theirs.shape} in PyTorch"
        if mask is not None and ours.shape[:2] == tuple(mask.shape):  # padding's outputs are never read
            ours, theirs = ours[mask.numpy() == 1], theirs[mask.numpy() == 1]
        if not np.allclose(ours, theirs, atol=1e-4, rtol=1e-3):
            return f"output {index}: max |difference| {np.abs(ours - theirs).max():.3g}"
    return None


def _fits(graph_inputs: list[Any], values: list[Any]) -> bool:
    for graph_input, value in zip(graph_inputs, values, strict=False):
        dims = graph_input.shape
        if len(dims) != value.ndim or any(
            isinstance(d, int) and d != s for d, s in zip(dims, value.shape, strict=True)
        ):
            return False
    return True


def _fresh_like(arch: Architecture) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """New values of the example's shapes: token ids and masks keep their kind."""
    import torch
    from torch.utils._pytree import tree_map

    def fresh(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        if leaf.is_floating_point():
            return torch.rand_like(leaf)
        return leaf.clone()  # ids and masks: the example's own (their structure matters)

    return tree_map(fresh, arch.args), tree_map(fresh, arch.kwargs)


# -- one architecture, every way --------------------------------------------------------------


@contextlib.contextmanager
def console() -> Iterator[Callable[[], str]]:
    """Capture what reaches the console (file descriptors 1 and 2, and Python's streams).

    Yields a function that returns the text so far; keeps the bare exporters' pages off this
    script's JSON, and shows what onnxport itself let through.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink, open(sink.fileno(), "w", closefd=False) as text:

        def read() -> str:
            text.flush()
            sink.seek(0)
            return sink.read().decode("utf-8", "replace")

        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield read
        finally:
            text.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def attempt(name: str, how: str) -> dict[str, Any]:
    """Export architecture ``name`` the way ``how`` and check the file: a JSON-ready row."""
    import warnings

    from onnxport.errors import OnnxportError, one_line

    arch = build(name)
    row: dict[str, Any] = {"model": name, "how": how}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / f"{name}.onnx"
        started = time.perf_counter()
        try:
            with console() as printed:
                try:
                    result = EXPORTERS[how](arch, path)
                finally:
                    text = printed()
                    row["console_chars"] = len(text)
                    if how == "onnxport":  # what onnxport let through; the bare ones print pages
                        row["console"] = text
            if how == "onnxport":
                row["exporter"] = result.exporter
                row["fallback_reason"] = result.fallback_reason
                row["validated"] = bool(result.validation and result.validation.passed)
                row["dynamic_axes"] = {
                    k: {str(a): n for a, n in v.items()} for k, v in result.dynamic_axes.items()
                }
        except Exception as error:
            row["seconds"] = time.perf_counter() - started
            row["exported"] = False
            row["error_type"] = type(error).__name__
            row["error"] = str(error) if isinstance(error, OnnxportError) else one_line(error)
            row["traceback"] = traceback.format_exc()[-2000:]
            row["correct"] = False
            return row
        row["seconds"] = time.perf_counter() - started
        row["exported"] = True
        try:
            problem = check_file(arch, path)
        except Exception as error:
            problem = f"ONNX Runtime failed: {one_line(error)}"
        row["correct"] = problem is None
        row["problem"] = problem
    return row


def outcome(name: str) -> dict[str, dict[str, Any]]:
    """onnxport, bare dynamo and bare TorchScript on architecture ``name``."""
    return {how: attempt(name, how) for how in EXPORTERS}
