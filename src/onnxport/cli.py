"""The ``onnxport`` command: ``export`` (a Hydra app), ``inspect`` and ``validate``.

``onnxport export --config-dir conf [overrides]`` composes the user's ``conf/config.yaml``
(``model``, ``checkpoint``, ``output``, ``export``) and runs :func:`export_from_config`.
Hydra's own flags work (``--cfg job``, ``-m export.opset=17,18``, ``--info``). The packaged
``hydra/output=onnxport`` settings keep Hydra from creating ``outputs/`` or changing directory,
so the command behaves as a DVC stage should. Under ``-m`` give each run its own file, e.g.
``output=models/model_${export.opset}.onnx``.

Errors are one line on stderr; the exit status is 2 for bad config or input and 1 when
validation failed (nothing was published). ``HYDRA_FULL_ERROR=1`` shows the traceback.

Module imports are standard library only: ``inspect`` must not pay for torch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxport.errors import EXIT_BAD_INPUT, ConfigError, InputError, OnnxportError

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

    from onnxport.config import ExportConfig
    from onnxport.pipeline import ExportResult

PACKAGED_CONF = Path(__file__).with_name("conf")
DEFAULT_CONFIG_DIR = "conf"
DEFAULT_CONFIG_NAME = "config"
# Selected ahead of the user's overrides, so a user can still pick Hydra's defaults back.
HYDRA_APP_OVERRIDES = (
    "hydra/output=onnxport",
    "hydra/job_logging=onnxport",
    "hydra/hydra_logging=onnxport",
    "hydra.output_subdir=null",
)
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"

USAGE = """\
usage: onnxport export [--config-dir DIR] [--config-name NAME] [hydra flags] [overrides ...]
       onnxport inspect FILE [--json]
       onnxport validate FILE [--checkpoint PATH] [--config-dir DIR] [--report PATH] [overrides ...]

export    export a checkpoint to a validated ONNX file (a Hydra app; see `onnxport export --help`)
inspect   show an ONNX file's signature, opset, sizes, operators and provenance (no torch)
validate  re-validate an ONNX file against a checkpoint and write the JSON report
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``onnxport <command> ...`` and return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else EXIT_BAD_INPUT
    commands = {
        "export": _export_command,
        "inspect": _inspect_command,
        "validate": _validate_command,
        "triton": lambda rest: __import__("onnxport.serving", fromlist=["*"]).triton_command(rest),
    }
    command = commands.get(args[0])
    if command is None:
        print(f"onnxport: unknown command {args[0]!r}; choose one of {', '.join(commands)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return command(args[1:])
    except SystemExit as stop:  # argparse and `--help` exit; callers of main() get the status
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except Exception as error:
        if _full_errors_requested():
            raise
        return _report_error(args[0], error)


def _report_error(command: str, error: Exception) -> int:
    """Print ``error`` as one line on stderr and return its exit status."""
    error = _as_config_error(error) or error
    if isinstance(error, OnnxportError):
        print(f"onnxport {command}: error: {error}", file=sys.stderr)
        return error.exit_code
    message = " ".join(str(error).split())
    print(
        f"onnxport {command}: unexpected {type(error).__name__}: {message} "
        f"(set {FULL_ERROR_ENV}=1 for the traceback)",
        file=sys.stderr,
    )
    return 1


# -- export -------------------------------------------------------------------------------


def export_from_config(cfg: DictConfig) -> ExportResult:
    """Export the model a composed config describes; the work behind ``onnxport export``.

    ``cfg`` holds ``model`` (a ``_target_`` mapping built with Hydra, or the class path of a
    LightningModule), ``checkpoint``, ``trust_checkpoint`` (default false), ``output`` and
    ``export`` (the :class:`~onnxport.config.ExportConfig` fields).
    """
    import onnxport
    from onnxport.load import file_sha256

    output = _required(cfg, "output")
    config = export_config_from(cfg)
    checkpoint = _required(cfg, "checkpoint")
    model = model_from_config(cfg, checkpoint)
    # A DVC stage's outs live in directories a fresh clone does not have yet.
    for key, path in (("output", output), ("export.validation.report", config.validation.report)):
        if path:
            _make_parent(key, path)
    return onnxport.export(model, None, output, config=config, checkpoint_sha256=file_sha256(checkpoint))


def export_config_from(cfg: DictConfig) -> ExportConfig:
    """The ``export`` node as a checked :class:`~onnxport.config.ExportConfig` (defaults if absent)."""
    from omegaconf import OmegaConf

    from onnxport.config import ExportConfig

    node = OmegaConf.select(cfg, "export")
    return ExportConfig.from_dict(OmegaConf.to_container(node, resolve=True) if node is not None else None)


def model_from_config(cfg: DictConfig, checkpoint: str) -> nn.Module | Any:
    """Build ``cfg.model`` and load ``checkpoint`` into it (see :func:`onnxport.load_model`).

    ``model`` may be a ``_target_`` mapping (instantiated, then the checkpoint's state_dict is
    loaded), the class path of a LightningModule (``load_from_checkpoint``), or absent when the
    checkpoint is self-contained (TorchScript, ``torch.export`` program).
    """
    from omegaconf import OmegaConf

    from onnxport.load import load_model

    trust = bool(OmegaConf.select(cfg, "trust_checkpoint", default=False))
    spec = OmegaConf.select(cfg, "model")
    if isinstance(spec, str):
        return load_model(checkpoint, model_class=_locate(spec, "model"), trust_checkpoint=trust)
    if spec is not None:
        if "_target_" not in spec:
            raise ConfigError(
                "model has no _target_",
                fix="set model._target_ to your nn.Module class, or model to a LightningModule class path",
            )
        _locate(spec._target_, "model._target_")  # a clearer error than instantiate's
    return load_model(checkpoint, model=spec, trust_checkpoint=trust)


def _locate(path: str, key: str) -> Any:
    from hydra._internal.utils import _locate  # what instantiate uses, minus its error logging

    try:
        return _locate(path)
    except Exception as error:
        cause = error.__cause__ or error
        raise ConfigError(
            f"{key}={path!r} cannot be imported ({type(cause).__name__}: {cause})",
            fix=f"set {key} to an importable 'package.module.Class' path (is the package installed?)",
        ) from error


def _make_parent(key: str, path: str) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"{key}={path!r}: its directory cannot be created ({error.strerror}: {error.filename})",
            fix=f"set {key} to a path in a writable directory",
        ) from error


def _required(cfg: DictConfig, key: str) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)  # None for a missing key or `???`
    if value is None or value == "":
        raise ConfigError(f"{key} is not set", fix=f"set {key}=... in the config or on the command line")
    return value


def _export_task(cfg: DictConfig, exit_codes: list[int], full_errors: bool) -> None:
    """The thin ``@hydra.main`` body: DVC-aware config, then the work function.

    Errors are reported here, as one line, so that under ``-m`` the other runs still happen
    and Hydra does not print its own banner; the worst exit status is kept in ``exit_codes``.
    """
    from onnxport.stage import resolve_stage_config

    try:
        result = export_from_config(resolve_stage_config(cfg))
    except Exception as error:
        if full_errors:
            raise
        exit_codes.append(_report_error("export", error))
        return
    validation = result.validation
    print(
        f"onnxport: wrote {result.path} ({result.size_bytes} bytes, sha256 {result.sha256[:12]}, "
        f"{result.exporter} exporter, opset {result.config.opset}, {result.seconds:.1f} s)"
    )
    if result.fallback_reason:
        print(f"onnxport: fell back to {result.exporter}: {result.fallback_reason}")
    if validation is not None:
        print(validation.summary())
        print(f"onnxport: validation report {result.report_path}")
    else:
        print("onnxport: validation disabled (export.validation.enabled=false)")


def _export_command(args: list[str]) -> int:
    from hydra import main as hydra_main

    _import_from_cwd()
    register_configs()
    exit_codes = [0]
    task = functools.partial(_export_task, exit_codes=exit_codes, full_errors=_full_errors_requested())
    app = hydra_main(version_base=None, config_path=str(PACKAGED_CONF), config_name=DEFAULT_CONFIG_NAME)(task)
    with _hydra_raises(), _argv("onnxport export", _hydra_argv(args)):
        app()
    return max(exit_codes)


def _hydra_argv(args: list[str]) -> list[str]:
    """Put the packaged Hydra settings in front of the user's overrides, keeping Hydra's flags.

    argparse takes overrides as one run of positionals, so they are moved ahead of the flags.
    """
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    parsed = get_args_parser().parse_args(args)
    flags = list(args)
    size = len(parsed.overrides)
    for start in range(len(flags) - size + 1):
        if size and flags[start : start + size] == parsed.overrides:
            del flags[start : start + size]
            break
    if parsed.config_dir is None:
        if Path(DEFAULT_CONFIG_DIR).is_dir():
            flags += ["--config-dir", DEFAULT_CONFIG_DIR]
        elif not (parsed.help or parsed.hydra_help):
            raise ConfigError(
                f"no --config-dir given and there is no ./{DEFAULT_CONFIG_DIR} in {Path.cwd()}",
                fix="run from the project root or pass --config-dir DIR (the dir holding config.yaml)",
            )
    return [*HYDRA_APP_OVERRIDES, *parsed.overrides, *flags]


@contextlib.contextmanager
def _argv(program: str, args: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = [program, *args]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """Make Hydra re-raise errors instead of printing them and exiting 1; main() reports them."""
    saved = os.environ.get(FULL_ERROR_ENV)
    os.environ[FULL_ERROR_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(FULL_ERROR_ENV, None)
        else:
            os.environ[FULL_ERROR_ENV] = saved


def _as_config_error(error: Exception) -> ConfigError | None:
    """Hydra composition and OmegaConf errors (unknown key, wrong type) as one-line ConfigErrors."""
    if not type(error).__module__.startswith(("hydra.", "omegaconf.")):
        return None
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    cause = error.__cause__
    detail = f": {cause}" if isinstance(cause, OmegaConfBaseException) else ""
    if isinstance(error, MissingConfigException):
        fix = "check --config-dir, --config-name and the config group choices in the defaults lists"
    else:
        fix = "check the key and value against `onnxport export --cfg job` and the config reference"
    return ConfigError(f"{error}{detail}", fix=fix)


def register_configs() -> None:
    """Register the ``ExportConfig`` schema in Hydra's ConfigStore as ``onnxport/export_schema``.

    A user's ``conf/export/default.yaml`` lists ``/onnxport/export_schema@_here_`` first in its
    defaults, so typos and wrong types in ``export.*`` fail at composition. The
    ``hydra_plugins.onnxport`` package calls this on import, which is how the schema reaches
    DVC's own composition of ``conf/`` in ``dvc exp run``.
    """
    from hydra.core.config_store import ConfigStore

    from onnxport.config import ExportConfig

    ConfigStore.instance().store(
        group="onnxport", name="export_schema", node=ExportConfig, provider="onnxport"
    )


def _import_from_cwd() -> None:
    """Let ``model._target_`` name the project's own code, as ``python -m`` would.

    A console script's ``sys.path`` starts at its own bin directory, not at the project a
    DVC stage runs in.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _full_errors_requested() -> bool:
    return os.environ.get(FULL_ERROR_ENV, "") not in ("", "0")


# -- inspect ------------------------------------------------------------------------------


def _inspect_command(args: list[str]) -> int:
    import json

    from onnxport.inspection import format_report, inspect_model

    parser = argparse.ArgumentParser(prog="onnxport inspect", description="Describe an ONNX file.")
    parser.add_argument("file", help="the .onnx file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    options = parser.parse_args(args)
    info = inspect_model(options.file)
    print(json.dumps(info, indent=2) if options.json else format_report(info))
    return 0


# -- validate -----------------------------------------------------------------------------


def _validate_command(args: list[str]) -> int:
    import onnxport
    from onnxport.errors import ValidationError
    from onnxport.stage import compose_config

    parser = argparse.ArgumentParser(
        prog="onnxport validate",
        description="Re-validate an ONNX file against a checkpoint, with the model config used at export.",
    )
    parser.add_argument("file", help="the .onnx file to check")
    parser.add_argument("--checkpoint", help="checkpoint to compare against (default: the config's)")
    parser.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, help="the Hydra config dir (conf)")
    parser.add_argument("--config-name", default=DEFAULT_CONFIG_NAME, help="primary config name (config)")
    parser.add_argument(
        "--report",
        help="where the JSON report goes (default: <FILE stem>.validation.json beside FILE)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. export.validation.atol=1e-3")
    options = parser.parse_intermixed_args(args)  # FILE, flags and overrides in any order
    if not Path(options.file).is_file():
        raise InputError(f"{options.file} does not exist", fix="pass the path of an existing .onnx file")

    _import_from_cwd()
    if not Path(options.config_dir).is_dir():
        raise ConfigError(f"config dir {options.config_dir!r} does not exist", fix="pass --config-dir DIR")
    with _hydra_raises():
        cfg = compose_config(options.config_dir, options.config_name, options.overrides)
    config = export_config_from(cfg)
    checkpoint = options.checkpoint or _required(cfg, "checkpoint")
    model = model_from_config(cfg, checkpoint)
    # Not export.validation.report: that is the export stage's DVC metric, and rewriting it
    # would make `dvc repro` run the stage again.
    report_path = Path(
        options.report or Path(options.file).with_name(f"{Path(options.file).stem}.validation.json")
    )
    _make_parent("--report", str(report_path))
    try:
        report = onnxport.validate(options.file, model, None, config=config)
    except ValidationError as error:
        if error.report is not None:  # validate() has already logged its table to stderr
            error.report.write_json(report_path)
        raise
    report.write_json(report_path)
    print(report.summary())
    print(f"onnxport: validation report {report_path}")
    if not report.passed:
        print(f"onnxport validate: {options.file} failed validation (see {report_path})", file=sys.stderr)
        return ValidationError.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
