"""``evaluate``: the ONNX model in ONNX Runtime on the test split, beside the PyTorch checkpoint.

Writes ``paths.accuracy`` (DVC metrics) and ``paths.latency_plot`` (ONNX Runtime and torch
milliseconds per batch, one row per batch size; a DVC plot).
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
    """Score ``paths.model`` and ``paths.checkpoint`` on the test split; write metrics and plot."""
    import onnxruntime as ort
    import torch

    from pipelines.data import load_split
    from pipelines.model import DigitsCNN

    torch.set_num_threads(cfg.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg.threads  # the same budget for both sides of the comparison
    images, labels = load_split(cfg.data.dir, "test")
    session = ort.InferenceSession(cfg.paths.model, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run_onnx(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

    model = DigitsCNN.load_from_checkpoint(cfg.paths.checkpoint, map_location="cpu", weights_only=True)
    model.eval()

    def run_torch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    onnx_logits, torch_logits = run_onnx(images), run_torch(images)
    metrics = {
        "test_samples": len(labels),
        "onnx_accuracy": accuracy(onnx_logits, labels),
        "torch_accuracy": accuracy(torch_logits, labels),
        "prediction_agreement": float(np.mean(onnx_logits.argmax(1) == torch_logits.argmax(1))),
        # x 1e6, as the validation metrics: `dvc metrics show` rounds to 5 decimals (1e-6 reads 0.0)
        "max_abs_logit_diff_e6": round(1e6 * float(np.max(np.abs(onnx_logits - torch_logits))), 4),
    }
    rows = [
        {
            "batch_size": size,
            "onnxruntime_ms": latency_ms(run_onnx, batch, cfg.evaluate.latency_runs),
            "torch_ms": latency_ms(run_torch, batch, cfg.evaluate.latency_runs),
        }
        for size, batch in batches(images, cfg.evaluate.batch_sizes)
    ]
    write_json(Path(cfg.paths.accuracy), metrics)
    write_json(Path(cfg.paths.latency_plot), rows)
    return metrics


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
    print(
        f"evaluate: ONNX Runtime accuracy {metrics['onnx_accuracy']:.4f}, "
        f"PyTorch accuracy {metrics['torch_accuracy']:.4f} on {metrics['test_samples']} test images"
    )


if __name__ == "__main__":
    main()
