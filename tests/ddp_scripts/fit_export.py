"""A 2-process CPU DDP fit with OnnxExportCallback, run by tests/test_callback.py.

Usage: ``python fit_export.py OUT_DIR {ok,fail} {pytorch_lightning,lightning}``

Each rank writes ``OUT_DIR/rank<N>.json`` when ``fit`` returns, or
``OUT_DIR/rank<N>.error`` when it raises. ``fail`` makes the exported model's eval
output random, so validation on rank 0 must reject it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

out_dir, mode, package = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if package == "lightning":
    import lightning.pytorch as pl
else:
    import pytorch_lightning as pl

from onnxport.callback import OnnxExportCallback  # noqa: E402

# Importing the callback must not pull in ONNX Runtime, nor the other Lightning package.
IMPORTED_AT_START = sorted(name for name in ("onnxruntime", "pytorch_lightning") if name in sys.modules)

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


class Regressor(pl.LightningModule):
    def __init__(self, noisy: bool) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        self.noisy = noisy
        self.example_input_array = torch.randn(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y + torch.rand_like(y) if self.noisy else y

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 3)), batch_size=4)
    callback = OnnxExportCallback(out_dir / "model.onnx", validation={"latency_runs": 0})
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
        callbacks=[callback],
    )
    rank = trainer.global_rank
    try:
        trainer.fit(Regressor(noisy=mode == "fail"), data)
    except BaseException as error:
        (out_dir / f"rank{rank}.error").write_text(f"{type(error).__name__}: {error}")
        raise
    marker = {
        "exported_here": callback.last_result is not None,
        "validation_passed": callback.last_result is not None and callback.last_result.validation.passed,
        "last_path": callback.last_path,
        "last_sha256": callback.last_sha256,
        "is_callback_of_trainer_package": isinstance(callback, pl.Callback),
        "imported_at_start": IMPORTED_AT_START,
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(marker))


if __name__ == "__main__":
    main()
