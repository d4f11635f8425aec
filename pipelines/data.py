"""Data loaders over the arrays ``prepare`` wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split: (N, 1, 8, 8) float32 in [0, 1] and (N,) int64."""
    with np.load(Path(data_dir) / f"{split}.npz") as arrays:
        return arrays["image"], arrays["label"]


class DigitsDataModule(pl.LightningDataModule):
    """Train/val/test loaders; the train loader shuffles with a seeded generator.

    Its arguments are the keys of ``conf/data``, so ``instantiate(cfg.data)`` builds it: the
    ``train`` stage, and the ``export`` stage's int8 calibration (``calibration.datamodule:
    ${data}``) read the same batches through the same code. ``prepare_data`` writes the splits
    when they are missing (``prepare`` writes them in the pipeline); the split settings are its.
    """

    def __init__(
        self,
        dir: str | Path = "data",  # the key of conf/data
        batch_size: int = 64,
        seed: int = 0,
        split_seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
    ) -> None:
        super().__init__()
        self.data_dir = Path(dir)
        self.batch_size = batch_size
        self.seed = seed
        self.split = {"split_seed": split_seed, "val_fraction": val_fraction, "test_fraction": test_fraction}

    def prepare_data(self) -> None:
        from pipelines.prepare import SPLITS, split_digits

        if not all((self.data_dir / f"{split}.npz").is_file() for split in SPLITS):
            split_digits(self.data_dir, **self.split)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        images, labels = load_split(self.data_dir, split)
        dataset = TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
