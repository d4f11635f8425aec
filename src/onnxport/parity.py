"""Numbers that say how far ONNX Runtime is from eager PyTorch, and where they part ways.

``compare`` judges one output with ``|ort - torch| <= atol + rtol * |torch|``.
``first_divergence`` names the first operator whose intermediate value differs.
It follows ``torch.onnx.verification``'s idea (the dynamo exporter names ONNX values
after the FX nodes of ``torch.export``), but compares the file on disk against a
fresh ``torch.export`` of the model: ``verify_onnx_program`` compares an in-memory
``ONNXProgram`` with its own exported program, so it cannot see a file that has
drifted from the model it is checked against.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch.utils import _pytree as pytree

from onnxport.report import OutputCheck

if TYPE_CHECKING:
    from onnxport.inputs import ModelInputs

logger = logging.getLogger(__name__)

# as torch.onnx.verification: keeps the relative error finite where torch gives 0
_REL_EPS = 1e-7


def compare(
    name: str,
    expected: np.ndarray,
    actual: np.ndarray,
    atol: float,
    rtol: float,
    *,
    allow_nonfinite: bool = False,
) -> OutputCheck:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected|``.

    NaN or Inf in ``expected`` fails the output unless ``allow_nonfinite``; then Inf and NaN
    must sit where ``expected`` has them.
    """
    check = OutputCheck(name, tuple(expected.shape), atol, rtol, allow_nonfinite=allow_nonfinite)
    if expected.shape != actual.shape:
        check.error = f"has shape {list(actual.shape)} in onnxruntime but {list(expected.shape)} in torch"
        return check
    expected = expected.astype(np.float64)
    actual = actual.astype(np.float64)
    check.nan_torch, check.nan_ort = int(np.isnan(expected).sum()), int(np.isnan(actual).sum())
    check.inf_torch, check.inf_ort = int(np.isinf(expected).sum()), int(np.isinf(actual).sum())
    finite = np.isfinite(expected) & np.isfinite(actual)
    diff, magnitude = np.zeros_like(expected), np.zeros_like(expected)
    diff[finite] = np.abs(actual[finite] - expected[finite])  # inf - inf would warn and give NaN
    magnitude[finite] = np.abs(expected[finite])
    within = (finite & (diff <= atol + rtol * magnitude)) | (np.isinf(expected) & (actual == expected))
    if allow_nonfinite:
        within |= np.isnan(expected) & np.isnan(actual)
    if expected.size:
        check.mismatch_pct = float(100.0 * (1.0 - within.mean()))
        check.max_abs_diff = float(diff.max())
        check.max_rel_diff = float((diff / (magnitude + _REL_EPS)).max())
        allowed = atol + rtol * magnitude  # 0 only where atol=0 and torch gives 0: any diff there is a miss
        used = np.divide(diff, allowed, out=np.where(diff > 0, np.inf, 0.0), where=allowed > 0)
        check.tolerance_use = float(min(used.max(), 1e300))  # JSON has no Inf
    return check


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()  # numpy has no bfloat16


def first_divergence(
    path: str | os.PathLike[str], model: Any, inputs: ModelInputs, atol: float, rtol: float
) -> Optional[str]:
    """The first operator, in execution order, whose ONNX value breaks the tolerances.

    Returns a phrase such as ``Gemm 'linear_1' (aten.linear.default) max_abs_diff=2.1e-02``,
    or ``None`` when no intermediate value can be matched (e.g. a TorchScript export,
    whose value names are not FX node names) or none diverges.
    """
    args, kwargs = inputs.args, inputs.kwargs
    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        try:
            program = torch.export.export(model, args, kwargs, strict=False)
        except Exception as error:  # models only the TorchScript exporter could take
            logger.info("cannot localize the divergence: torch.export failed: %s", error)
            return None
    module = program.module()
    expected, targets, output_nodes = _torch_values(module, pytree.tree_leaves((args, kwargs)))

    import onnx

    path = Path(path)
    proto = onnx.load(os.fspath(path), load_external_data=False)
    graph_outputs = [value.name for value in proto.graph.output]
    # the exporter renames graph outputs; the FX output node lists them in the same order
    onnx_name = {node: name for node, name in zip(output_nodes, graph_outputs, strict=False)}
    producers = {value: node.op_type for node in proto.graph.node for value in node.output}
    names = [(fx, onnx_name.get(fx, fx)) for fx in expected if onnx_name.get(fx, fx) in producers]
    if all(fx in onnx_name for fx, _ in names):  # only the outputs matched: nothing to localize
        logger.info("cannot localize the divergence: no ONNX value is named after an FX node of the model")
        return None
    extra = [onnx_value for _, onnx_value in names if onnx_value not in graph_outputs]
    proto.graph.output.extend(onnx.ValueInfoProto(name=value) for value in extra)
    actual = dict(zip(graph_outputs + extra, _run_in_directory(proto, path, inputs.feed()), strict=True))
    for fx, onnx_value in names:
        # intermediate values hold -inf masks and the like: only a difference is a divergence
        check = compare(onnx_value, expected[fx], actual[onnx_value], atol, rtol, allow_nonfinite=True)
        if check.error is not None:  # same name, other layout: not comparable, not evidence
            continue
        if not check.passed:
            return f"{producers[onnx_value]} {onnx_value!r} ({targets[fx]}) {check.problem()}"
    return None


def _torch_values(module: torch.fx.GraphModule, flat_inputs: list[Any]) -> tuple[dict, dict, list[str]]:
    """Every tensor an FX ``call_function`` node produces, in execution order."""
    values: dict[str, np.ndarray] = {}
    targets: dict[str, str] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> Any:
            result = super().run_node(node)
            if node.op == "call_function" and isinstance(result, torch.Tensor):
                values[node.name] = to_numpy(result)
                targets[node.name] = str(node.target)
            return result

    with torch.no_grad():
        Recorder(module).run(*flat_inputs, enable_io_processing=False)
    (output,) = [node for node in module.graph.nodes if node.op == "output"]
    output_nodes = [arg.name for arg in pytree.tree_leaves(output.args) if isinstance(arg, torch.fx.Node)]
    return values, targets, output_nodes


def _run_in_directory(proto: Any, path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``proto`` from a temporary file beside ``path`` so relative external data resolves."""
    import onnx
    import onnxruntime as ort

    handle, temporary = tempfile.mkstemp(suffix=".onnx", prefix=f".{path.stem}.localize.", dir=path.parent)
    os.close(handle)
    try:
        onnx.save(proto, temporary)
        session = ort.InferenceSession(temporary, providers=["CPUExecutionProvider"])
        return session.run(None, feed)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
