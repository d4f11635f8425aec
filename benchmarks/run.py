"""Benchmark onnxport.export against the bare exporter, side by side in one run.

For each model (a small CNN, a TransformerEncoder, a tiny BERT built from a transformers config, a
64 MB MLP, and with ``BENCH=large`` the 2.3 GB MLP of issue 12) three contenders export the same
model with the dynamo exporter and a dynamic batch axis:

* ``bare``: ``torch.onnx.export(..., dynamic_shapes=batch, external_data=True)``, what a careful
  user writes for a model of any size (the fair baseline: a self-contained file makes the bare
  exporter copy the weights into one protobuf, which would flatter onnxport);
* ``onnxport``: ``onnxport.export`` with validation off;
* ``onnxport+validate``: ``onnxport.export`` with its default validation.

Every measurement runs in a fresh process that first warms up on a tiny model (imports and
first-call caches are not what is measured), builds the model, then times one export and records
its peak RSS over the loaded model (``/proc/self/clear_refs`` resets the high-water mark). The
contenders alternate order from one repeat to the next, so drift on this shared machine hits all
alike; only ratios between columns measured in one run mean much. For each model the published
file's inference latency is also measured, ONNX Runtime against eager PyTorch, at batch 1 and 32.

Run with ``make bench`` (or ``make bench BENCH=large``; ``BENCH=arch`` runs only the real architectures of
``benchmarks/architectures.py``, which ``make bench`` runs after the others). Prints the tables and writes
``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONTENDERS = ("bare", "onnxport", "onnxport+validate")
MODELS = ("cnn", "transformer", "bert", "mlp64")
LARGE = ("mlp2300",)
RESULTS = Path(__file__).with_name("results.json")
# Issue 12's goals, as ratios to the bare exporter measured in the same run.
GOALS = {
    "onnxport": ("wall", 1.1, "export without validation <= 1.1x the bare exporter's wall time"),
    "onnxport+validate": ("wall", 1.5, "export with default validation <= 1.5x the bare exporter"),
}
MEMORY_GOALS = {  # peak RSS over the loaded model, per weight byte, on the large model
    "onnxport": 0.1,
    "onnxport+validate": 1.1,
}
LATENCY_BATCHES = (1, 32)


# -- models ---------------------------------------------------------------------------------


def build(name: str) -> tuple[Any, dict[str, Any]]:
    """The model (eval mode, seeded) and its example inputs as keyword arguments."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )
        return model.eval(), {"input": torch.randn(2, 3, 32, 32)}
    if name == "transformer":
        layer = nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=512, batch_first=True)
        model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
        return model.eval(), {"src": torch.randn(2, 16, 256)}
    if name == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
        )
        model = BertModel(config).eval()
        ids = torch.randint(0, 1000, (2, 16))
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if name in ("mlp64", "mlp2300"):
        width, depth = (4096, 1) if name == "mlp64" else (12000, 4)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers[:-1]).eval(), {"input": torch.randn(2, width)}
    raise ValueError(f"unknown model {name!r}; choose from {MODELS + LARGE}")


def weight_bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


# -- one export -----------------------------------------------------------------------------


def export_once(contender: str, model: Any, inputs: dict[str, Any], path: Path) -> None:
    import torch

    if contender == "bare":
        batch = torch.export.Dim("batch")
        torch.onnx.export(
            model,
            (),
            str(path),
            kwargs=inputs,
            input_names=list(inputs),
            dynamic_shapes={name: {0: batch} for name in inputs},
            external_data=True,
            verbose=False,
        )
        return
    import onnxport

    validation = {"enabled": contender == "onnxport+validate"}
    onnxport.export(model, inputs, path, exporter="dynamo", validation=validation)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def measure(contender: str, name: str) -> dict[str, float]:
    """Wall time and peak RSS of one export, in this (fresh) process."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        warm = torch.nn.Linear(4, 2).eval()
        export_once(contender, warm, {"input": torch.randn(2, 4)}, Path(tmp) / "warmup.onnx")
        model, inputs = build(name)
        gc.collect()
        baseline_kb = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark (Linux)
        started = time.perf_counter()
        export_once(contender, model, inputs, Path(tmp) / "model.onnx")
        wall = time.perf_counter() - started
        peak_kb = _status_kb("VmHWM")
    weights = weight_bytes(model)
    return {
        "wall_s": wall,
        "rss_extra_mb": (peak_kb - baseline_kb) / 1024,
        "rss_extra_x_weights": (peak_kb - baseline_kb) * 1024 / weights,
        "weights_mb": weights / 2**20,
    }


def measure_in_subprocess(contender: str, name: str) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.run", "--measure", contender, name]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{contender} on {name} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- inference latency of the published file ------------------------------------------------


def latency(name: str, runs: int = 20) -> dict[str, dict[str, float]]:
    """Median ms per call at batch 1 and 32: ONNX Runtime on the published file, and eager torch."""
    import onnxruntime
    import torch

    import onnxport

    model, inputs = build(name)
    timings: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        result = onnxport.export(model, inputs, Path(tmp) / "model.onnx", validation={"enabled": False})
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
        for batch in LATENCY_BATCHES:
            feed = {k: torch.cat([v] * batch)[:batch] for k, v in inputs.items()}  # rows of the example
            numpy_feed = {i.name: feed[i.name].numpy() for i in session.get_inputs()}
            with torch.inference_mode():
                eager = _median_ms(lambda feed=feed: model(**feed), runs)
            ort = _median_ms(lambda numpy_feed=numpy_feed: session.run(None, numpy_feed), runs)
            timings[f"batch{batch}"] = {"ort_ms": ort, "eager_ms": eager, "ort_over_eager": ort / eager}
    return timings


def _median_ms(call: Any, runs: int) -> float:
    call()  # first call pays for allocation and kernel selection
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


# -- the callback at the end of fit ----------------------------------------------------------


def callback_overhead(repeats: int) -> dict[str, float]:
    """What ``OnnxExportCallback`` adds to the end of ``fit`` against a bare ``to_onnx`` call.

    The reference pipeline's digits CNN, fitted for one short epoch with the callback; its
    ``on_fit_end`` (load nothing, choose inputs, export, validate, publish) is timed beside
    ``LightningModule.to_onnx(path, dynamo=True)`` of the same module, alternating, in this process.
    """
    import pytorch_lightning as pl
    import torch

    import onnxport
    from pipelines.model import DigitsCNN

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    samples: dict[str, list[float]] = {"to_onnx": [], "callback": []}
    with tempfile.TemporaryDirectory() as tmp:
        callback = onnxport.OnnxExportCallback(Path(tmp) / "callback.onnx")
        module = DigitsCNN()
        trainer = pl.Trainer(
            max_epochs=1,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        trainer.fit(module, loader)  # the first export, in fit, warms every library up
        module.to_onnx(Path(tmp) / "warmup.onnx", dynamo=True)
        for repeat in range(repeats):
            order = ("to_onnx", "callback") if repeat % 2 == 0 else ("callback", "to_onnx")
            for contender in order:
                started = time.perf_counter()
                if contender == "to_onnx":
                    module.to_onnx(Path(tmp) / "bare.onnx", dynamo=True)
                else:
                    callback.on_fit_end(trainer, module)
                samples[contender].append(time.perf_counter() - started)
    row = {name: statistics.median(times) for name, times in samples.items()}
    row["callback_x_to_onnx"] = row["callback"] / row["to_onnx"]
    return row


# -- the run --------------------------------------------------------------------------------


def run_model(name: str, repeats: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {c: [] for c in CONTENDERS}
    for repeat in range(repeats):
        order = CONTENDERS if repeat % 2 == 0 else tuple(reversed(CONTENDERS))
        for contender in order:
            samples[contender].append(measure_in_subprocess(contender, name))
            print(f"  {name} {contender}: {samples[contender][-1]['wall_s']:.2f} s", flush=True)
    row: dict[str, Any] = {"weights_mb": samples["bare"][0]["weights_mb"]}
    for contender, runs in samples.items():
        row[contender] = {
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "rss_extra_mb": statistics.median(r["rss_extra_mb"] for r in runs),
            "rss_extra_x_weights": statistics.median(r["rss_extra_x_weights"] for r in runs),
        }
    for contender in CONTENDERS:
        row[contender]["wall_x_bare"] = row[contender]["wall_s"] / row["bare"]["wall_s"]
    return row


def goals(results: dict[str, Any]) -> list[str]:
    lines = []
    for contender, (_, limit, text) in GOALS.items():
        for name, row in results.get("models", {}).items():
            ratio = row[contender]["wall_x_bare"]
            lines.append(f"{'holds' if ratio <= limit else 'MISSED':>6}  {text}: {name} {ratio:.2f}x")
    if "callback" in results:
        ratio = results["callback"]["callback_x_to_onnx"]
        lines.append(
            f"{'holds' if ratio <= 1.5 else 'MISSED':>6}  the callback adds <= 1.5x a bare to_onnx to the "
            f"end of fit: {ratio:.2f}x"
        )
    for contender, limit in MEMORY_GOALS.items():
        for name in LARGE:
            if name in results.get("models", {}):
                ratio = results["models"][name][contender]["rss_extra_x_weights"]
                lines.append(
                    f"{'holds' if ratio <= limit else 'MISSED':>6}  peak memory of {contender} <= "
                    f"{limit}x the weights: {name} {ratio:.2f}x"
                )
    if results.get("architectures"):
        from benchmarks.architectures import goal_line

        lines.append(goal_line(results["architectures"]))
    return lines


def print_tables(results: dict[str, Any]) -> None:
    print(f"\nmachine: {results['machine']}")
    print("\nExport: median wall seconds (ratio to bare) and peak RSS over the loaded model (x weights)")
    header = f"{'model':<12}{'weights MB':>11}" + "".join(f"{c:>34}" for c in CONTENDERS)
    print(header)
    for name, row in results["models"].items():
        cells = "".join(_export_cell(row[c]) for c in CONTENDERS)
        print(f"{name:<12}{row['weights_mb']:>11.1f}{cells}")
    print("(xW, per weight byte, means something only where the weights dwarf fixed costs: the MLPs)")
    print("\nInference latency of the published file: median ms (ONNX Runtime / eager PyTorch)")
    print(f"{'model':<12}" + "".join(f"{f'batch {b}':>30}" for b in LATENCY_BATCHES))
    for name, row in results["latency"].items():
        cells = "".join(
            f"{row[f'batch{b}']['ort_ms']:8.2f} / {row[f'batch{b}']['eager_ms']:8.2f} "
            f"({row[f'batch{b}']['ort_over_eager']:.2f}x)".rjust(30)
            for b in LATENCY_BATCHES
        )
        print(f"{name:<12}{cells}")
    if "callback" in results:
        row = results["callback"]
        print(
            f"\nEnd of fit, digits CNN: OnnxExportCallback {row['callback']:.2f} s, "
            f"LightningModule.to_onnx {row['to_onnx']:.2f} s ({row['callback_x_to_onnx']:.2f}x)"
        )
    print("\nGoals (issue 12)")
    for line in goals(results):
        print(line)


def _export_cell(cell: dict[str, float]) -> str:
    memory = f"+{cell['rss_extra_mb']:.0f}MB={cell['rss_extra_x_weights']:.2f}xW"
    return f"{cell['wall_s']:.2f}s {cell['wall_x_bare']:.2f}x {memory}".rjust(34)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh-process exports per contender and model"
    )
    parser.add_argument(
        "--models",
        default=os.environ.get("BENCH", "default"),
        help="'default' (cnn, transformer, bert, mlp64, then the real architectures and the variants), "
        "'large' (the 2.3 GB MLP), 'arch' (only the real architectures, benchmarks/architectures.py), "
        "'variants' (only benchmarks/variants.py), 'all', or a comma list",
    )
    parser.add_argument("--measure", nargs=2, metavar=("CONTENDER", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import logging
    import warnings

    logging.disable(logging.WARNING)  # exporter chatter would bury the table
    warnings.simplefilter("ignore")
    if args.measure:  # child process: one measurement, one JSON line
        print(json.dumps(measure(*args.measure)))
        return 0

    from benchmarks import variants

    if args.models == "variants":  # issue 13's section alone, into the same results file
        return record_variants(variants.run())
    if args.models == "arch":  # issue 14's real architectures alone, into the same results file
        from benchmarks import architectures

        found = architectures.run(args.repeats)
        architectures.print_table(found)
        _save({"architectures": found})
        return 0
    chosen = {"default": MODELS, "large": LARGE, "all": MODELS + LARGE}.get(args.models)
    names = chosen or tuple(args.models.split(","))
    repeats = {name: 1 if name in LARGE else args.repeats for name in names}
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "models": {},
        "latency": {},
    }
    for name in names:
        print(f"{name}:", flush=True)
        results["models"][name] = run_model(name, repeats[name])
        results["latency"][name] = latency(name, runs=5 if name in LARGE else 20)
    if any(name in MODELS for name in names):
        results["callback"] = callback_overhead(args.repeats)
    print_tables(results)
    if args.models in ("default", "all"):
        from benchmarks import architectures

        print("\narchitectures:", flush=True)
        results["architectures"] = architectures.run(args.repeats)
        architectures.print_table(results["architectures"])
    results["goals"] = goals(results)
    _save(results)
    if args.models in ("default", "all"):
        return record_variants(variants.run())
    return 0


def record_variants(measured: dict[str, Any]) -> int:
    """Print the variants section (benchmarks/variants.py) and keep it in the results file."""
    from benchmarks import variants

    variants.print_tables(measured)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["variants"] = measured
    results["variant_goals"] = [
        f"{'PASS' if met else 'MISS'}  {model} {goal}: {value}"
        for model, goal, value, met in variants.goals(measured)
    ]
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


def _save(results: dict[str, Any]) -> None:
    """Write results.json, keeping the other selection's rows: `make bench` and `make bench
    BENCH=large` (or `BENCH=arch`) fill one file."""
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    merged = {**previous, **results}
    for key in ("models", "latency"):
        merged[key] = {**previous.get(key, {}), **results.get(key, {})}
    merged["goals"] = goals(merged)
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
