"""Compose ``conf/`` the way every stage of the reference pipeline reads it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = Path("conf")
CONFIG_NAME = "config"


def compose(overrides: Sequence[str] = (), config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    """The composed and resolved pipeline config, with no stage bookkeeping."""
    from omegaconf import OmegaConf

    from onnxport.hydra_config import compose as compose_config

    cfg = compose_config(config_dir, CONFIG_NAME, overrides)
    OmegaConf.resolve(cfg)  # as DVC does before writing params.yaml
    return cfg


def stage_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config a DVC stage must run with.

    ``dvc exp run -S`` composes its overrides into params.yaml while plain ``dvc repro`` leaves
    params.yaml alone, so ``onnxport.stage.resolve_stage_config`` picks the right source and keeps
    params.yaml in step with ``conf/``.
    """
    from onnxport.stage import resolve_stage_config

    return resolve_stage_config(compose(overrides), overrides)


if __name__ == "__main__":  # python -m pipelines.config: refresh params.yaml after editing conf/
    from onnxport.stage import refresh_params

    refresh_params(".")
