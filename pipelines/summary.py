"""What ``make run`` prints at the end: where the model is, what it scores, whether it validated.

Reads only files the pipeline wrote; it never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def summary(cfg: DictConfig) -> str:
    """A few lines about the exported model; names the stage to run when a file is missing."""
    model = Path(cfg.paths.model)
    accuracy_file = Path(cfg.paths.accuracy)
    validation_file = Path(cfg.paths.validation_report)
    missing = [str(path) for path in (model, accuracy_file, validation_file) if not path.is_file()]
    if missing:
        return f"not built yet: {', '.join(missing)} (run `make run` or `dvc repro`)"

    accuracy = _read(accuracy_file)
    validation = _read(validation_file)
    passed = "passed" if validation.get("passed") else "FAILED"
    lines = [
        f"model:       {model.resolve()} ({model.stat().st_size / 1024:.1f} KiB, opset {_opset(model)})",
        f"accuracy:    {accuracy['onnx_accuracy']:.4f} in ONNX Runtime, "
        f"{accuracy['torch_accuracy']:.4f} in PyTorch ({accuracy['test_samples']} test images)",
        f"validation:  {passed} ({validation_file})",
    ]
    variants = accuracy.get("variants") or {}
    if variants:
        lines.append("variants:    (test accuracy in ONNX Runtime; top-1 agreement with PyTorch)")
        width = max(map(len, variants))
        for name, row in variants.items():
            path = model.with_name(f"{model.stem}.{name}.onnx")
            lines.append(
                f"  {name:<{width}}  {row['accuracy']:.4f}  agreement {row['prediction_agreement']:.4f}  "
                f"{row['size_bytes'] / 1024:7.1f} KiB  {path}"
            )
    return "\n".join(lines)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _opset(path: Path) -> int | str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")


def main() -> None:
    from pipelines.config import compose

    print(summary(compose()))


if __name__ == "__main__":
    main()
