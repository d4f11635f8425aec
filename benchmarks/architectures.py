"""Real architectures (issue 14): ``onnxport.export`` with validation against the bare exporters.

The models of ``tests/architectures/zoo.py`` (CLIP text, T5 encoder, BERT, a Llama LM, and
torchvision's SSDlite when ``.venv-vision`` exists) are exported, each in a fresh process that
first warms up on a tiny model, by:

* ``dynamo``: the bare ``torch.onnx.export(..., dynamo=True)`` a careful user writes;
* ``torchscript``: the bare ``torch.onnx.export(..., dynamo=False)``;
* ``onnxport``: ``onnxport.export`` with its defaults, validation included.

The goal is on the models bare dynamo exports: the median over them of onnxport's wall time over
bare dynamo's, measured side by side in this run, at most 1.3x. Where bare dynamo fails,
onnxport's time (with its fallback) is shown but has no ratio.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "tests" / "architectures"
VISION_PYTHON = ROOT / ".venv-vision" / "bin" / "python"
CONTENDERS = ("dynamo", "torchscript", "onnxport")
GOAL = 1.3


def _zoo() -> Any:
    if str(ZOO) not in sys.path:
        sys.path.insert(0, str(ZOO))
    import zoo

    return zoo


def measure(contender: str, name: str) -> dict[str, Any]:
    """One export of ``name`` by ``contender`` in this (fresh) process: wall time and whether it worked."""
    import torch

    zoo = _zoo()
    with tempfile.TemporaryDirectory() as tmp:
        warm = zoo.Architecture(torch.nn.Linear(4, 2).eval(), (), {"input": torch.randn(2, 4)}, (), {})
        warm.names, warm.dynamic = ["input"], {"input": {0: "batch"}}
        with zoo.console():
            zoo.EXPORTERS[contender](warm, Path(tmp) / "warmup.onnx")
        arch = zoo.build(name)
        started = time.perf_counter()
        try:
            with zoo.console():
                result = zoo.EXPORTERS[contender](arch, Path(tmp) / "model.onnx")
        except Exception as error:
            return {"wall_s": time.perf_counter() - started, "ok": False, "error": type(error).__name__}
        wall = time.perf_counter() - started
    row: dict[str, Any] = {"wall_s": wall, "ok": True}
    if contender == "onnxport":
        row["exporter"] = result.exporter
    return row


def _in_subprocess(contender: str, name: str) -> dict[str, Any]:
    python = VISION_PYTHON if name in _zoo().VISION else Path(sys.executable)
    command = [str(python), "-m", "benchmarks.architectures", contender, name]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{contender} on {name} crashed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def names() -> list[str]:
    """The zoo's models; the torchvision ones only where .venv-vision exists."""
    zoo = _zoo()
    return [name for name in zoo.BUILDERS if name not in zoo.VISION or VISION_PYTHON.is_file()]


def run(repeats: int) -> dict[str, Any]:
    """Every contender on every model, alternating order per repeat; medians and the goal."""
    rows: dict[str, Any] = {}
    for name in names():
        samples: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
        for repeat in range(1 if name in _zoo().VISION else repeats):  # a minute per export
            order = CONTENDERS if repeat % 2 == 0 else tuple(reversed(CONTENDERS))
            for contender in order:
                samples[contender].append(_in_subprocess(contender, name))
                cell = samples[contender][-1]
                print(f"  {name} {contender}: {cell['wall_s']:.2f} s{'' if cell['ok'] else ' (failed)'}")
        row: dict[str, Any] = {}
        for contender, cells in samples.items():
            row[contender] = {
                "wall_s": statistics.median(c["wall_s"] for c in cells),
                "ok": all(c["ok"] for c in cells),
                **({"exporter": cells[0].get("exporter")} if contender == "onnxport" else {}),
            }
        if row["dynamo"]["ok"] and row["onnxport"]["ok"]:
            row["onnxport_x_dynamo"] = row["onnxport"]["wall_s"] / row["dynamo"]["wall_s"]
        rows[name] = row
    ratios = [row["onnxport_x_dynamo"] for row in rows.values() if "onnxport_x_dynamo" in row]
    return {"models": rows, "median_onnxport_x_dynamo": statistics.median(ratios) if ratios else None}


def print_table(results: dict[str, Any]) -> None:
    print("\nReal architectures (issue 14): median wall seconds per export, fresh process each")
    print(
        f"{'model':<12}{'bare dynamo':>14}{'bare torchscript':>18}{'onnxport+validate':>22}{'x dynamo':>10}"
    )
    for name, row in results["models"].items():
        cells = [f"{row[c]['wall_s']:.2f}s" + ("" if row[c]["ok"] else " fail") for c in CONTENDERS]
        exporter = row["onnxport"].get("exporter") or "-"
        ratio = f"{row['onnxport_x_dynamo']:.2f}x" if "onnxport_x_dynamo" in row else "-"
        print(f"{name:<12}{cells[0]:>14}{cells[1]:>18}{cells[2] + f' ({exporter})':>22}{ratio:>10}")
    if not VISION_PYTHON.is_file():
        print("(ssdlite left out: .venv-vision is missing; `make vision` creates it)")
    print(f"\n{goal_line(results)}")


def goal_line(results: dict[str, Any]) -> str:
    median = results["median_onnxport_x_dynamo"]
    if median is None:
        return "MISSED  no model that both bare dynamo and onnxport export"
    verdict = "holds" if median <= GOAL else "MISSED"
    return (
        f"{verdict:>6}  median onnxport.export with validation / bare dynamo over the models bare "
        f"dynamo exports <= {GOAL}x: {median:.2f}x"
    )


def main(argv: list[str]) -> int:
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    contender, name = argv
    print(json.dumps(measure(contender, name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
