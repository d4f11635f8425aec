"""DVC stage support: one source of truth for a Hydra config run as a DVC stage (public API).

DVC composes ``conf/`` (plus ``dvc exp run -S`` overrides) into ``params.yaml`` only in
``dvc exp run``; plain ``dvc repro`` never does, while a stage that composes ``conf/`` itself
ignores ``-S``. :func:`resolve_stage_config` makes both paths agree:

- ``dvc exp run`` (``DVC_EXP_NAME`` set): ``params.yaml`` was just composed from ``conf/`` and
  ``-S``, so it is merged over the config; the stage's own command-line overrides are applied
  to it once more, so they still win (and ``+key=value`` still appends).
- ``dvc repro`` (``DVC_STAGE`` set, no ``DVC_EXP_NAME``): the config composed from ``conf/`` is
  used as is, and ``params.yaml`` is rewritten (only when its content differs) with exactly what
  ``dvc exp run`` would compose (:func:`refresh_params`), so the params recorded in ``dvc.lock``
  are the ones that ran.
- outside DVC: the config unchanged.

A stage composes its config and calls it first. With Hydra's compose API, as the reference
pipeline's stages do (``pipelines/config.py``)::

    from onnxport.hydra_config import compose
    from onnxport.stage import resolve_stage_config

    overrides = sys.argv[1:]
    cfg = resolve_stage_config(compose("conf", "config", overrides), overrides)

or in a ``@hydra.main`` app, as ``onnxport export`` does (the overrides come from Hydra)::

    @hydra.main(config_path="conf", config_name="config", version_base=None)
    def train(cfg):
        cfg = resolve_stage_config(cfg)

DVC's composition resolves the whole config into ``params.yaml`` outside any Hydra app, so
``${hydra:...}`` interpolations (the lightning-hydra-template's ``paths.output_dir``) and unset
``${oc.env:...}`` fail there; :func:`refresh_params` names the key and the fix.
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


def resolve_stage_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> DictConfig:
    """The config a DVC stage should run with (see the module docstring).

    Args:
        cfg: the config the stage composed from ``conf/`` (with its command-line overrides).
        overrides: those command-line overrides; ``None`` reads them from a running
            ``@hydra.main`` app (``HydraConfig``), else none.

    Outside DVC ``cfg`` is returned unchanged. Under ``dvc repro`` ``params.yaml`` may be
    rewritten (:func:`refresh_params`). Nothing is resolved.
    """
    if "DVC_STAGE" not in os.environ:
        return cfg
    root = _repo_root()
    if os.environ.get("DVC_EXP_NAME"):
        if overrides is None:
            overrides = _command_line_overrides()
        return _merge_params(cfg, root / PARAMS_FILE, overrides)
    refresh_params(root)
    return cfg


def refresh_params(root: str | os.PathLike[str]) -> bool:
    """Compose ``conf/`` into ``params.yaml`` as ``dvc exp run`` does; return whether it changed.

    ``root`` is the DVC repository (the directory holding ``.dvc/``). Reads the ``hydra``
    section of its DVC config (``config_dir``, ``config_name``, ``config_module``,
    ``plugins_path``) and does nothing unless ``hydra.enabled`` is set. The file is rewritten
    only when its content differs. Run ``python -c "from onnxport.stage import refresh_params;
    refresh_params('.')"`` after editing ``conf/`` so ``dvc.yaml`` sees new paths.

    Raises:
        ConfigError: the config does not resolve outside a Hydra app (as DVC resolves it),
            naming the key and the fix.
    """
    from dvc.config import Config
    from dvc.utils.hydra import compose_and_dump
    from omegaconf.errors import OmegaConfBaseException

    root = Path(root).resolve()  # Hydra wants an absolute config dir
    hydra = Config(dvc_dir=str(root / ".dvc")).get("hydra", {})
    if not hydra.get("enabled", False):
        return False
    config_module = hydra.get("config_module")
    config_dir = None if config_module else str(root / hydra.get("config_dir", "conf"))
    params = root / PARAMS_FILE
    with tempfile.TemporaryDirectory() as scratch, _fresh_global_hydra():
        composed = Path(scratch) / PARAMS_FILE
        try:
            compose_and_dump(
                composed,
                config_dir,
                config_module,
                hydra.get("config_name", "config"),
                str(root / hydra.get("plugins_path", "")),
                [],
            )
        except OmegaConfBaseException as error:
            raise _dvc_composition_error(
                error, config_dir, config_module, hydra.get("config_name", "config")
            ) from error
        text = composed.read_text(encoding="utf-8")
    if params.is_file() and params.read_text(encoding="utf-8") == text:
        return False
    params.write_text(text, encoding="utf-8")  # rewriting unchanged params would only churn mtimes
    log.info("refreshed %s from the Hydra config", params)
    return True


def _dvc_composition_error(
    error: BaseException, config_dir: str | None, config_module: str | None, config_name: str
) -> Exception:
    """DVC's resolution error names no key: compose again, find the key, and name its fix."""
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from onnxport.errors import ConfigError
    from onnxport.hydra_config import first_unresolvable, unresolvable

    GlobalHydra.instance().clear()
    if config_dir:
        initialize = initialize_config_dir(config_dir, version_base=None)
    else:
        initialize = initialize_config_module(str(config_module), version_base=None)
    with initialize:
        found = first_unresolvable(compose(config_name))
    key, cause = found or (getattr(error, "full_key", None) or "the config", error)
    named = unresolvable(key, cause)
    return ConfigError(
        f"DVC's Hydra composition (dvc exp run) resolves the whole config: {named.message}",
        fix=f"{named.fix}, in the config DVC composes (hydra.config_name in .dvc/config)",
    )


def _merge_params(cfg: DictConfig, params: Path, overrides: Sequence[str]) -> DictConfig:
    """``params.yaml`` over ``cfg``, with the stage's command-line overrides applied once.

    ``cfg`` already has the overrides; DVC composed ``params.yaml`` without them, so they are
    applied to the params before the merge (applying them to the merged config a second time
    fails on ``+key=value``: the key exists by then).
    """
    from omegaconf import OmegaConf

    if not params.is_file():
        return cfg
    composed = OmegaConf.load(params)
    if overrides:
        # Same call DVC uses to apply `-S` to a params file.
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser

        ConfigLoaderImpl._apply_overrides_to_config(
            OverridesParser.create().parse_overrides(list(overrides)), composed
        )
    return OmegaConf.merge(cfg, composed)


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
