"""Benchmark onnxport.export against a bare torch.onnx.export, side by side in one run.

Reports, for a small and a medium (~64 MB) MLP, under each exporter:

* wall time of ``torch.onnx.export`` (dynamic batch, one file), of
  ``onnxport.export`` without validation, and of ``onnxport.export`` with its
  default validation, as medians over interleaved repeats (the machine is
  noisy, so only the ratios between columns measured together mean much);
  each is also given as a ratio to the bare ``torch.onnx.export`` of the same exporter;
* peak extra memory of one export over the memory held before it, in a fresh
  process per measurement (RSS high-water mark, and Python allocations seen by
  tracemalloc), divided by the model's parameter bytes, one column per tool.
  Under 1 means the weights were not copied. The TorchScript exporter itself
  peaks near 2x inside torch.onnx, so ``onnxport/ts`` cannot do better than
  ``torch.onnx/ts``; the dynamo path streams the weights and needs a fixed amount.

Run with ``make bench`` (``python -m benchmarks.run``). Prints a table and
writes ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

MODELS = {"small": (64, 2), "medium": (2048, 5)}  # (width, hidden layers): ~0.03 MB and ~64 MB
# tool -> the bare torch.onnx.export its time is compared with (same exporter)
TOOLS = {
    "torch.onnx": "torch.onnx",
    "onnxport": "torch.onnx",
    "onnxport+validate": "torch.onnx",
    "torch.onnx/ts": "torch.onnx/ts",
    "onnxport/ts": "torch.onnx/ts",
}
BATCH = 4
RESULTS = Path(__file__).with_name("results.json")


def build_mlp(size: str) -> Any:
    import torch
    from torch import nn

    width, depth = MODELS[size]
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(32, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers).eval()


def parameter_bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def export_once(tool: str, model: Any, path: Path) -> None:
    import torch

    example = torch.randn(BATCH, 32)
    if tool == "torch.onnx":
        # What a careful user writes by hand: dynamo, batch axis dynamic, one self-contained file.
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
            external_data=False,
            verbose=False,
        )
    elif tool == "torch.onnx/ts":
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    else:
        import onnxport

        validation = {"enabled": tool == "onnxport+validate"}
        exporter = "torchscript" if tool == "onnxport/ts" else "auto"  # auto: dynamo, the default
        onnxport.export(model, example, path, exporter=exporter, validation=validation)


def time_exports(size: str, repeats: int, workdir: Path) -> dict[str, float]:
    """Median seconds per tool; tools alternate within each repeat so drift hits all alike."""
    model = build_mlp(size)
    for tool in TOOLS:  # warm-up: first-call imports and caches are not what we measure
        export_once(tool, model, workdir / f"warmup-{size}.onnx")
    samples: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    for repeat in range(repeats):
        order = TOOLS if repeat % 2 == 0 else tuple(reversed(TOOLS))
        for tool in order:
            started = time.perf_counter()
            export_once(tool, model, workdir / f"{size}-{tool.replace('/', '-')}.onnx")
            samples[tool].append(time.perf_counter() - started)
    return {tool: statistics.median(times) for tool, times in samples.items()}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def measure_memory(tool: str, size: str) -> dict[str, float]:
    """Peak extra memory of one export, measured in this (fresh) process."""
    with tempfile.TemporaryDirectory() as tmp:
        export_once(tool, build_mlp("small"), Path(tmp) / "warmup.onnx")  # load every library first
        model = build_mlp(size)
        gc.collect()
        baseline_kb = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark (Linux)
        tracemalloc.start()
        export_once(tool, model, Path(tmp) / "model.onnx")
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak_kb = _status_kb("VmHWM")
        file_bytes = (Path(tmp) / "model.onnx").stat().st_size
    weights = parameter_bytes(model)
    return {
        "param_mb": weights / 2**20,
        "file_mb": file_bytes / 2**20,
        "rss_extra_mb": (peak_kb - baseline_kb) / 1024,
        "rss_extra_x_params": (peak_kb - baseline_kb) * 1024 / weights,
        "traced_peak_mb": traced_peak / 2**20,
    }


def memory_in_subprocess(tool: str, size: str) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.run", "--memory", tool, size]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(results: dict[str, Any]) -> None:
    print("\nWall time (median seconds; ratio to torch.onnx.export of the same exporter, same run)")
    print(f"{'model':<8}{'params MB':>10}" + "".join(f"{tool:>20}" for tool in TOOLS))
    for size, row in results["time"].items():
        cells = "".join(f"{f'{row[t]:.2f} ({row[t] / row[base]:.2f}x)':>20}" for t, base in TOOLS.items())
        print(f"{size:<8}{results['param_mb'][size]:>10.2f}{cells}")
    print(
        "\nPeak extra memory during one export per parameter byte, fresh process each "
        "(RSS high-water mark over baseline, MB in brackets)"
    )
    print(f"{'model':<8}{'params MB':>10}" + "".join(f"{tool:>20}" for tool in TOOLS))
    for size, by_tool in results["memory"].items():
        cells = "".join(
            f"{row['rss_extra_x_params']:.2f}x ({row['rss_extra_mb']:.0f})".rjust(20)
            for row in by_tool.values()
        )
        print(f"{size:<8}{results['param_mb'][size]:>10.2f}{cells}")
    print("(per parameter byte means something only where the weights dwarf fixed costs: the medium model.)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed exports per tool and model")
    parser.add_argument("--memory", nargs=2, metavar=("TOOL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    if args.memory:  # child process: one measurement, one JSON line
        print(json.dumps(measure_memory(*args.memory)))
        return 0

    import logging
    import warnings

    logging.disable(logging.WARNING)  # exporter chatter (and TorchScript's deprecation) would bury the table
    warnings.simplefilter("ignore")
    results: dict[str, Any] = {"time": {}, "memory": {}, "param_mb": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in MODELS:
            results["param_mb"][size] = parameter_bytes(build_mlp(size)) / 2**20
            results["time"][size] = time_exports(size, args.repeats, Path(tmp))
    for size in MODELS:
        results["memory"][size] = {tool: memory_in_subprocess(tool, size) for tool in TOOLS}
    print_table(results)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
