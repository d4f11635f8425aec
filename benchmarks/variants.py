"""Variants (issue 13): the optimised, fp16 and int8 files ``onnxport.export`` makes in one run.

Two models: the reference pipeline's digits CNN, trained here for a few seconds on scikit-learn's
digits through the pipeline's own datamodule (static int8 calibrates on its first training
batches and every file is judged on the validation split, as the pipeline does), and a
TransformerEncoder (4 layers, d_model 256) calibrated and judged on batches drawn like its
inputs (it has no dataset). Each model is exported once with every
variant; then, side by side in this process, each file's size, its ONNX Runtime latency at batch
32 (one intra-op thread, files measured in alternating order over several rounds, median), and
for the CNN its test accuracy and top-1 agreement with the fp32 PyTorch model.

``make bench`` runs it after the export benchmark; ``make bench BENCH=variants`` runs only this.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# skip: a variant that fails validation is reported (rejected: a MISS), the others still measured.
VARIANTS = [
    {"name": "opt", "optimize": "ort", "on_mismatch": "skip"},
    {"name": "slim", "optimize": "slim", "on_mismatch": "skip"},
    {"name": "fp16", "precision": "fp16", "on_mismatch": "skip"},
    {"name": "int8", "precision": "int8", "quantization": "static", "on_mismatch": "skip"},
    {"name": "int8dyn", "precision": "int8", "quantization": "dynamic", "on_mismatch": "skip"},
]
INT8 = ("int8", "int8dyn")
MODELS = ("digits_cnn", "transformer")
LATENCY_BATCH = 32
ROUNDS = 5
RUNS = 20


def build(name: str, workdir: Path) -> dict[str, Any]:
    """The model (eval mode), its example input, calibration batches and, for the CNN, test data."""
    import torch

    if name == "digits_cnn":
        return _digits_cnn(workdir)
    if name == "transformer":
        from torch import nn

        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=512, batch_first=True)
        model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False).eval()
        generator = torch.Generator().manual_seed(1)
        calibration = [torch.randn(LATENCY_BATCH, 16, 256, generator=generator) for _ in range(8)]
        validation = [torch.randn(LATENCY_BATCH, 16, 256, generator=generator) for _ in range(4)]
        return {
            "model": model,
            "example": torch.randn(2, 16, 256),
            "calibration": calibration,
            "validation": validation,
        }
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def _digits_cnn(workdir: Path) -> dict[str, Any]:
    """The pipeline's DigitsCNN trained on the pipeline's splits (8 epochs, seconds on a CPU)."""
    import pytorch_lightning as pl
    import torch

    from pipelines.data import DigitsDataModule, load_split
    from pipelines.model import DigitsCNN

    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(workdir / "data", batch_size=64, seed=0)
    data.prepare_data()
    model = DigitsCNN()
    trainer = pl.Trainer(
        max_epochs=8,
        accelerator="cpu",
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    model.eval()
    # As the pipeline's int8 variant: the first 8 batches of the (seeded, shuffled) training loader.
    calibration = [images for images, _ in itertools.islice(data.train_dataloader(), 8)]
    # Judged on the validation split, as the pipeline's export.validation.data does.
    validation = [images for images, _ in data.val_dataloader()]
    images, labels = load_split(workdir / "data", "test")
    return {
        "model": model,
        "example": torch.zeros(2, 1, 8, 8),
        "calibration": calibration,
        "validation": validation,
        "test": (images, labels),
    }


def measure(name: str) -> dict[str, Any]:
    import numpy as np
    import onnxruntime
    import torch

    import onnxport

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        built = build(name, Path(tmp))
        model = built["model"]
        output = Path(tmp) / f"{name}.onnx"
        started = time.perf_counter()
        result = onnxport.export(
            model,
            built["example"],
            output,
            variants=VARIANTS,
            calibration_samples=built["calibration"],
            validation_samples=built["validation"],
        )
        seconds = time.perf_counter() - started
        files = {"fp32": Path(result.path)} | {
            v["name"]: output.with_name(f"{output.stem}.{v['name']}.onnx") for v in VARIANTS
        }
        passed = {"fp32": bool(result.validation.passed)} | _variant_verdicts(result)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        sessions = {
            key: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for key, path in files.items()
            if path.is_file()
        }
        example = built["example"]
        batch = torch.cat([example] * LATENCY_BATCH)[:LATENCY_BATCH].numpy()
        if "test" in built:
            batch = built["test"][0][:LATENCY_BATCH]
        timings: dict[str, list[float]] = {key: [] for key in sessions}
        for round_ in range(ROUNDS):
            order = list(sessions)[round_ % len(sessions) :] + list(sessions)[: round_ % len(sessions)]
            for key in order:
                timings[key].append(_median_ms(sessions[key], batch, RUNS))
        rows: dict[str, dict[str, Any]] = {}
        fp32_ms = statistics.median(timings["fp32"])
        fp32_bytes = files["fp32"].stat().st_size
        for key in files:
            if key not in sessions:
                rows[key] = {"published": False, "passed": passed.get(key)}
                continue
            ms = statistics.median(timings[key])
            size = files[key].stat().st_size
            rows[key] = {
                "published": True,
                "passed": passed.get(key),
                "size_bytes": size,
                "size_x": size / fp32_bytes,
                "latency_b32_ms": ms,
                "latency_x": ms / fp32_ms,
            }
        if "test" in built:
            images, labels = built["test"]
            with torch.inference_mode():
                reference = model(torch.from_numpy(images)).numpy().argmax(1)
            for key, session in sessions.items():
                logits = session.run(None, {session.get_inputs()[0].name: images})[0]
                predicted = np.asarray(logits).argmax(1)
                rows[key]["test_accuracy"] = float(np.mean(predicted == labels))
                rows[key]["top1_agreement"] = float(np.mean(predicted == reference))
            rows["torch"] = {"test_accuracy": float(np.mean(reference == labels))}
    return {"export_s": seconds, "files": rows}


def _variant_verdicts(result: Any) -> dict[str, bool]:
    """``{name: passed}`` from ``ExportResult.variants`` (a rejected variant is ``False``)."""
    verdicts = {}
    for variant in getattr(result, "variants", None) or []:
        name = getattr(variant, "name", None) or variant["name"]
        passed = getattr(variant, "passed", None)
        verdicts[name] = bool(passed if passed is not None else variant["passed"])
    return verdicts


def _median_ms(session: Any, batch: Any, runs: int) -> float:
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)  # first call pays for allocation and kernel selection
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def goals(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """``(model, goal, measured, met)`` for each of issue 13's goals, from one run's numbers."""
    rows: list[tuple[str, str, str, bool]] = []
    for name, measured in results.items():
        files = measured["files"]
        for key in INT8:
            row = files.get(key, {})
            if not row.get("published"):
                rows.append((name, f"{key} published", "rejected", False))
                continue
            rows.append(_ratio(name, f"{key} ORT latency b32 / fp32 <= 0.6x", row["latency_x"], 0.6))
            rows.append(_ratio(name, f"{key} file / fp32 file <= 0.3x", row["size_x"], 0.3))
        fp16 = files.get("fp16", {})
        if fp16.get("published"):
            rows.append(_ratio(name, "fp16 file / fp32 file <= 0.55x", fp16["size_x"], 0.55))
        else:
            rows.append((name, "fp16 published", "rejected", False))
        for key in ("opt", "slim"):
            passed = bool(files.get(key, {}).get("passed"))
            rows.append(
                (
                    name,
                    f"optimize {'ort' if key == 'opt' else key} passes fp32 tolerances",
                    str(passed),
                    passed,
                )
            )
        if "torch" in files and files.get("int8", {}).get("published"):
            drop = 100 * (files["fp32"]["test_accuracy"] - files["int8"]["test_accuracy"])
            rows.append(
                (name, "static int8 test accuracy within 0.5 pt of fp32", f"{drop:+.2f} pt", drop <= 0.5)
            )
            agreement = files["int8"]["top1_agreement"]
            rows.append(
                (name, "static int8 top-1 agreement >= 99%", f"{100 * agreement:.2f}%", agreement >= 0.99)
            )
    return rows


def _ratio(model: str, goal: str, value: float, limit: float) -> tuple[str, str, str, bool]:
    return (model, goal, f"{value:.2f}x", value <= limit)


def print_tables(results: dict[str, Any]) -> None:
    print("\nVariants (issue 13): one onnxport.export per model, every file measured side by side")
    print(f"ONNX Runtime at batch {LATENCY_BATCH}, 1 thread, median of {ROUNDS} rounds x {RUNS} runs")
    header = f"{'model':<12}{'file':<9}{'passed':>7}{'KB':>10}{'x fp32':>8}{'b32 ms':>9}{'x fp32':>8}"
    header += f"{'test acc':>10}{'top-1 agr':>11}"
    print(header)
    for name, measured in results.items():
        for key, row in measured["files"].items():
            if key == "torch":
                print(f"{name:<12}{'torch':<9}{'':>52}{100 * row['test_accuracy']:>9.2f}%")
                continue
            if not row.get("published"):
                print(f"{name:<12}{key:<9}{'no':>7}  (rejected: not published)")
                continue
            line = (
                f"{name:<12}{key:<9}{'yes' if row['passed'] else 'NO':>7}{row['size_bytes'] / 1024:>10.1f}"
                f"{row['size_x']:>8.2f}{row['latency_b32_ms']:>9.3f}{row['latency_x']:>8.2f}"
            )
            if "test_accuracy" in row:
                line += f"{100 * row['test_accuracy']:>9.2f}%{100 * row['top1_agreement']:>10.2f}%"
            print(line)
    print("\nGoals (issue 13)")
    for model, goal, measured, met in goals(results):
        print(f"{'PASS' if met else 'MISS':>5}  {model:<12}{goal:<52}{measured}")


def run() -> dict[str, Any]:
    results = {}
    for name in MODELS:
        print(f"variants: {name}", flush=True)
        results[name] = measure(name)
    return results
