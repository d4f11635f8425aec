"""``train``: fit ``DigitsCNN`` with the configured callbacks, keeping the best checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from onnxport.errors import ConfigError


def train(cfg: DictConfig) -> Path:
    """Fit the model on ``data/`` and return the best checkpoint's path (``paths.checkpoint``).

    The callbacks come from ``cfg.callbacks`` (ModelCheckpoint and OnnxExportCallback in the
    reference config); seeding and ``deterministic: true`` make reruns give the same weights.
    """
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate

    torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = instantiate(cfg.model)
    data = instantiate(cfg.data)  # conf/data builds pipelines.data.DigitsDataModule
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks)
    trainer.fit(model, datamodule=data)

    best = Path(trainer.checkpoint_callback.best_model_path)
    expected = Path(cfg.paths.checkpoint)
    if best.resolve() != expected.resolve():
        raise ConfigError(
            f"the best checkpoint was saved as {best}, not paths.checkpoint={expected}",
            fix="build callbacks.model_checkpoint's dirpath and filename from conf/paths",
        )
    return expected


def main() -> None:
    from pipelines.config import stage_config

    print(f"train: best checkpoint {train(stage_config())}")


if __name__ == "__main__":
    main()
