"""``evaluate``: the ONNX model and its variants in ONNX Runtime on the test split, beside PyTorch.

Writes ``paths.accuracy`` (DVC metrics: the fp32 file's numbers at the top, each variant's under
``variants.<name>``) and ``paths.latency_plot`` (milliseconds per batch of the fp32 file
(``onnxruntime_ms``), of each variant (``<name>_ms``) and of torch; one row per batch size).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``paths.model``, each variant beside it and ``paths.checkpoint`` on the test split.

    The variants are the configured ``export.variants`` whose file is present (the export
    stage removes the files of variants no longer configured); a configured one that is
    missing (rejected with ``on_mismatch: skip``) is left out, and said so.
    """
    import torch

    from pipelines.data import load_split
    from pipelines.model import DigitsCNN

    torch.set_num_threads(cfg.threads)
    images, labels = load_split(cfg.data.dir, "test")
    files = model_files(cfg)
    runners = {name: onnx_runner(path, cfg.threads) for name, path in files.items() if path.is_file()}
    for name in files.keys() - runners.keys():
        print(f"evaluate: no {files[name]} (variant {name} was not published), left out")

    model = DigitsCNN.load_from_checkpoint(cfg.paths.checkpoint, map_location="cpu", weights_only=True)
    model.eval()

    def run_torch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    torch_logits = run_torch(images)
    scores = {name: score(run(images), torch_logits, labels) for name, run in runners.items()}
    fp32 = scores.pop(FP32)
    metrics = {
        "test_samples": len(labels),
        "onnx_accuracy": fp32["accuracy"],
        "torch_accuracy": accuracy(torch_logits, labels),
        "prediction_agreement": fp32["prediction_agreement"],
        "max_abs_logit_diff_e6": fp32["max_abs_logit_diff_e6"],
        # One entry per variant file: its accuracy, and how far it moved from the fp32 PyTorch model.
        "variants": {name: {**row, "size_bytes": files[name].stat().st_size} for name, row in scores.items()},
    }
    runs = cfg.evaluate.latency_runs
    rows = []
    for size, batch in batches(images, cfg.evaluate.batch_sizes):
        row: dict[str, Any] = {"batch_size": size}
        for name, run in runners.items():
            row["onnxruntime_ms" if name == FP32 else f"{name}_ms"] = latency_ms(run, batch, runs)
        row["torch_ms"] = latency_ms(run_torch, batch, runs)
        rows.append(row)
    write_json(Path(cfg.paths.accuracy), metrics)
    write_json(Path(cfg.paths.latency_plot), rows)
    return metrics


FP32 = "fp32"
"""The name the fp32 file (``paths.model``) goes by beside its variants."""


def model_files(cfg: DictConfig) -> dict[str, Path]:
    """``{"fp32": paths.model, <variant name>: <stem>.<name>.onnx beside it, ...}`` in config order."""
    model = Path(cfg.paths.model)
    variants = cfg.export.get("variants") or []
    return {FP32: model, **{v.name: model.with_name(f"{model.stem}.{v.name}.onnx") for v in variants}}


def onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """``run(images) -> logits`` through an ONNX Runtime session on ``path``.

    The images are cast to the graph input's type: an fp16 variant with ``fp16_io`` takes float16.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the same budget for every file and for torch
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(
            session.run(None, {graph_input.name: batch.astype(dtype, copy=False)})[0], np.float32
        )

    return run


def score(logits: np.ndarray, torch_logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": accuracy(logits, labels),
        "prediction_agreement": float(np.mean(logits.argmax(1) == torch_logits.argmax(1))),
        # x 1e6, as the validation metrics: `dvc metrics show` rounds to 5 decimals (1e-6 reads 0.0)
        "max_abs_logit_diff_e6": round(1e6 * float(np.max(np.abs(logits - torch_logits))), 4),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == labels))


def batches(images: np.ndarray, sizes: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """One batch per size, cycling through the test images when a size exceeds the split."""
    return [(int(size), np.resize(images, (int(size), *images.shape[1:]))) for size in sizes]


def latency_ms(run: Callable[[np.ndarray], Any], batch: np.ndarray, runs: int) -> float:
    """Median wall time of ``run(batch)`` in milliseconds, after one warm-up call."""
    run(batch)
    timings = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        run(batch)
        timings.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(timings), 4)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    from pipelines.config import stage_config

    metrics = evaluate(stage_config())
    variants = "".join(f", {name} {row['accuracy']:.4f}" for name, row in metrics["variants"].items())
    print(
        f"evaluate: ONNX Runtime accuracy {metrics['onnx_accuracy']:.4f}{variants}, "
        f"PyTorch accuracy {metrics['torch_accuracy']:.4f} on {metrics['test_samples']} test images"
    )


if __name__ == "__main__":
    main()
