"""One source of truth for a Hydra app running as a DVC stage.

DVC composes ``conf/`` (plus ``dvc exp run -S`` overrides) into ``params.yaml`` only in
``dvc exp run``; plain ``dvc repro`` never does, while a ``@hydra.main`` script reads ``conf/``
and so ignores ``-S``. :func:`resolve_stage_config` makes both paths agree:

- ``dvc exp run`` (``DVC_EXP_NAME`` set): ``params.yaml`` was just composed from ``conf/`` and
  ``-S``, so it is merged over the config; overrides on the stage's own command line still win.
- ``dvc repro`` (``DVC_STAGE`` set, no ``DVC_EXP_NAME``): the config composed from ``conf/`` is
  used as is, and ``params.yaml`` is rewritten (only when its content differs) with exactly what
  ``dvc exp run`` would compose, so the params recorded in ``dvc.lock`` are the ones that ran.
- outside DVC: the config unchanged.

Every stage command that is a Hydra app calls it first::

    @hydra.main(config_path="../conf", config_name="config", version_base=None)
    def train(cfg):
        cfg = resolve_stage_config(cfg)
        ...

``onnxport export`` does this for the export stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"  # the only file DVC's Hydra composition writes


def compose_config(
    config_dir: str | os.PathLike[str], config_name: str, overrides: Sequence[str] = ()
) -> DictConfig:
    """Compose ``config_dir/config_name`` with ``overrides``, with onnxport's schema registered."""
    from hydra import compose, initialize_config_dir

    from onnxport.cli import register_configs

    register_configs()
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base=None):
        return compose(config_name, overrides=list(overrides))


def resolve_stage_config(cfg: DictConfig) -> DictConfig:
    """The config a DVC stage should run with (see the module docstring)."""
    if "DVC_STAGE" not in os.environ:
        return cfg
    root = _repo_root()
    if os.environ.get("DVC_EXP_NAME"):
        return _merge_params(cfg, root / PARAMS_FILE)
    refresh_params(root)
    return cfg


def refresh_params(root: str | os.PathLike[str]) -> bool:
    """Compose ``conf/`` into ``params.yaml`` as ``dvc exp run`` does; return whether it changed.

    Does nothing unless ``hydra.enabled`` is set in the repository's DVC config.
    """
    from dvc.config import Config
    from dvc.utils.hydra import compose_and_dump

    root = Path(root).resolve()  # Hydra wants an absolute config dir
    hydra = Config(dvc_dir=str(root / ".dvc")).get("hydra", {})
    if not hydra.get("enabled", False):
        return False
    config_module = hydra.get("config_module")
    config_dir = None if config_module else str(root / hydra.get("config_dir", "conf"))
    params = root / PARAMS_FILE
    with tempfile.TemporaryDirectory() as scratch, _fresh_global_hydra():
        composed = Path(scratch) / PARAMS_FILE
        compose_and_dump(
            composed,
            config_dir,
            config_module,
            hydra.get("config_name", "config"),
            str(root / hydra.get("plugins_path", "")),
            [],
        )
        text = composed.read_text(encoding="utf-8")
    if params.is_file() and params.read_text(encoding="utf-8") == text:
        return False
    params.write_text(text, encoding="utf-8")  # rewriting unchanged params would only churn mtimes
    log.info("refreshed %s from the Hydra config", params)
    return True


def _merge_params(cfg: DictConfig, params: Path) -> DictConfig:
    from omegaconf import OmegaConf

    if not params.is_file():
        return cfg
    merged = OmegaConf.merge(cfg, OmegaConf.load(params))
    overrides = _command_line_overrides()
    if overrides:
        # Same call DVC uses to apply `-S` to a params file.
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser

        ConfigLoaderImpl._apply_overrides_to_config(
            OverridesParser.create().parse_overrides(overrides), merged
        )
    return merged


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _repo_root() -> Path:
    """The DVC repo the stage runs in: nearest ``.dvc`` above the cwd.

    ``DVC_ROOT`` is only the fallback: for ``dvc exp run --temp`` or queued runs DVC points it
    at the original workspace, not the temporary copy the stage runs in.
    """
    here = Path.cwd().resolve()
    for directory in (here, *here.parents):
        if (directory / ".dvc").is_dir():
            return directory
    return Path(os.environ.get("DVC_ROOT", here))


@contextlib.contextmanager
def _fresh_global_hydra() -> Iterator[None]:
    """DVC's composition initialises Hydra itself, which fails inside a running Hydra app."""
    from hydra.core.global_hydra import GlobalHydra

    saved = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        # Hydra's initialize() swaps the singleton for a copy on exit: look it up again.
        GlobalHydra.instance().hydra = saved
