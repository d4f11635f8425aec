"""``DigitsCNN``: the small LightningModule the reference pipeline trains and exports."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F


class DigitsCNN(pl.LightningModule):
    """Two conv blocks and a linear head over 8x8 grey images; ``forward(image)`` returns logits.

    Batch norm and dropout are in the graph on purpose: the exported model must be in eval mode.
    """

    def __init__(self, channels: int = 16, hidden: int = 64, num_classes: int = 10, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 2 * 2, hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )
        # Batch of 2, not 1: a dynamic batch axis traced at size 1 is specialised to 1.
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        image, label = batch
        logits = self(image)
        loss = F.cross_entropy(logits, label)
        accuracy = (logits.argmax(dim=1) == label).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}_acc", accuracy, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
