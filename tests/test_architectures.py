"""Real architectures nobody here wrote (issue 14): onnxport against the bare exporters.

Each architecture of ``tests/architectures/zoo.py`` (tiny configs, random weights, no download) is
exported with ``onnxport.export`` and its defaults, and with bare dynamo and bare TorchScript calls
as a careful user writes them; every file is checked in ONNX Runtime against eager PyTorch on
inputs no export saw. The rule: onnxport publishes a validated, correct file wherever either bare
exporter can produce a correct one, and where none can, its error names the real cause (never a
parity failure whose "loosen atol/rtol" cannot help). Each runs in a fresh interpreter
(``run_one.py``); the detection model in ``.venv-vision``, where torchvision is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ONE = ROOT / "tests" / "architectures" / "run_one.py"
VISION_PYTHON = ROOT / ".venv-vision" / "bin" / "python"


def outcome(name: str, python: Path | str = sys.executable) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [str(python), str(RUN_ONE), name], capture_output=True, text=True, cwd=ROOT, timeout=1500
    )
    assert done.returncode == 0, f"run_one.py {name} crashed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(result: dict[str, dict[str, Any]]) -> str:
    """One line per way of exporting, for assertion messages."""
    lines = []
    for how, row in result.items():
        verdict = "correct" if row["correct"] else "WRONG" if row["exported"] else "failed"
        why = row.get("problem") or row.get("error") or ""
        lines.append(f"  {how:<12} {verdict:<8} {row['seconds']:6.1f}s  {why[:300]}")
    return "\n".join(lines)


def assert_onnxport_ties_or_beats(name: str, result: dict[str, dict[str, Any]]) -> None:
    ours = result["onnxport"]
    bare = [how for how in ("dynamo", "torchscript") if result[how]["correct"]]
    summary = f"{name}:\n{table(result)}"
    print(summary)  # the suite's table, with pytest -s
    if ours["exported"]:  # whatever the bare exporters did, a published file must be right
        assert ours["validated"] and ours["correct"], summary
    if bare:
        assert ours["exported"], (
            f"bare {' and '.join(bare)} exported it correctly, onnxport did not\n{summary}"
        )
    else:
        assert ours["error_type"] not in ("ParityError", "NonFiniteError"), f"no real cause named\n{summary}"
    # the exporters' own output stays off the console: at most onnxport's lines come through
    stray = [
        line for line in ours["console"].splitlines() if line.strip() and not line.startswith("onnxport")
    ]
    assert not stray, f"{name}: exporter output reached the console: {stray[:5]}"


@pytest.mark.slow
def test_clip_text_a_causal_model_with_a_padded_mask():
    result = outcome("clip-text")
    assert_onnxport_ties_or_beats("clip-text", result)
    assert result["onnxport"]["exporter"] == "dynamo"


@pytest.mark.slow
def test_t5_encoder_needs_the_torchscript_fallback_and_says_so_in_one_line():
    result = outcome("t5-encoder")
    assert_onnxport_ties_or_beats("t5-encoder", result)
    ours = result["onnxport"]
    assert ours["exporter"] == "torchscript" and "dynamo failed" in ours["fallback_reason"]
    (line,) = [line for line in ours["console"].splitlines() if "could not export" in line]
    assert line.startswith("onnxport.exporters: dynamo could not export the model (")
    assert line.endswith("t5-encoder.rejected.dynamo.log")


@pytest.mark.slow
def test_bert_through_either_exporter(tmp_path):
    result = outcome("bert")
    assert_onnxport_ties_or_beats("bert", result)
    # onnxport's TorchScript path too: keyword inputs are passed by keyword, so the use_cache that
    # transformers re-injects does not collide with a default the legacy exporter filled in
    sys.path.insert(0, str(RUN_ONE.parent))
    from zoo import build, check_file

    import onnxport

    arch = build("bert")
    exported = onnxport.export(arch.model, arch.kwargs, tmp_path / "bert.onnx", exporter="torchscript")
    assert exported.exporter == "torchscript" and exported.validation.passed
    assert check_file(arch, exported.path) is None


@pytest.mark.slow
def test_llama_a_decoder_only_lm_without_cache():
    result = outcome("llama-lm")
    assert_onnxport_ties_or_beats("llama-lm", result)
    assert result["onnxport"]["exporter"] == "dynamo"


@pytest.mark.slow
def test_ssdlite_a_detection_model_with_nms_and_no_batch_axis():
    if not VISION_PYTHON.is_file():
        pytest.fail(
            f"{VISION_PYTHON} is missing: the detection model needs torchvision, which lives in "
            ".venv-vision. Create it with `make vision` (`make test` does)."
        )
    result = outcome("ssdlite", VISION_PYTHON)
    assert_onnxport_ties_or_beats("ssdlite", result)
