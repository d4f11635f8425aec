"""The template's ``src/train.py``: compose ``configs/train.yaml``, build everything, fit, test.

``_setup_root`` does what ``rootutils.setup_root`` does in the template (find the folder holding
``.project-root``, put it on ``sys.path``, set ``PROJECT_ROOT``) without the extra dependency.
"""

import os
import sys
from pathlib import Path
from typing import Any, Optional


def _setup_root(indicator: str = ".project-root") -> Path:
    here = Path(__file__).resolve()
    root = next(parent for parent in here.parents if (parent / indicator).exists())
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    os.environ["PROJECT_ROOT"] = str(root)
    return root


_setup_root()

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from lightning import Callback, LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


def instantiate_list(group: Optional[DictConfig]) -> list[Any]:
    """Every node of ``group`` that has a ``_target_`` (callbacks, loggers), built."""
    if not group:
        return []
    return [
        hydra.utils.instantiate(node)
        for node in group.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains the model, then tests it with the best checkpoint's weights (as the template does)."""
    if cfg.get("seed"):
        L.seed_everything(cfg.seed, workers=True)

    datamodule: LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks: list[Callback] = instantiate_list(cfg.get("callbacks"))
    logger: list[Logger] = instantiate_list(cfg.get("logger"))
    trainer: Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)

    object_dict = {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "callbacks": callbacks,
        "logger": logger,
        "trainer": trainer,
    }

    if cfg.get("train"):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    train_metrics = dict(trainer.callback_metrics)

    if cfg.get("test"):
        ckpt_path = trainer.checkpoint_callback.best_model_path or None
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)

    test_metrics = dict(trainer.callback_metrics)
    return {**train_metrics, **test_metrics}, object_dict


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> None:
    """Main entry point for training."""
    train(cfg)


if __name__ == "__main__":
    main()
