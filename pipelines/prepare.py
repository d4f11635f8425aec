"""``prepare``: scikit-learn's digits -> seeded train/val/test splits in ``data/*.npz``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

SPLITS = ("train", "val", "test")


def prepare(cfg: DictConfig) -> dict[str, int]:
    """Write ``<data.dir>/{train,val,test}.npz`` (``image`` (N, 1, 8, 8) float32 in [0, 1], ``label``).

    Returns the number of samples per split.
    """
    data = cfg.data
    return split_digits(data.dir, data.split_seed, data.val_fraction, data.test_fraction)


def split_digits(
    data_dir: str | Path, split_seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, int]:
    """The work of ``prepare``: seeded, stratified splits of the digits written to ``data_dir``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16 in the bundled data.
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    held_out = val_fraction + test_fraction
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, test_size=held_out, random_state=split_seed, stratify=labels
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest,
        y_rest,
        test_size=test_fraction / held_out,
        random_state=split_seed,
        stratify=y_rest,
    )
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, x, y in zip(SPLITS, (x_train, x_val, x_test), (y_train, y_val, y_test), strict=True):
        save_npz(out / f"{split}.npz", image=x, label=y)
        counts[split] = len(y)
    return counts


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` with fixed zip timestamps, so the same data gives the same bytes (and md5)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(entry, "w") as file:
                np.lib.format.write_array(file, np.ascontiguousarray(array), allow_pickle=False)


def main() -> None:
    from pipelines.config import stage_config

    counts = prepare(stage_config())
    print("prepare: " + ", ".join(f"{split}={n}" for split, n in counts.items()))


if __name__ == "__main__":
    main()
