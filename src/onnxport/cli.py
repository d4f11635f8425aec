"""The ``onnxport`` command: ``export``, ``inspect`` and ``validate``.

``onnxport export --config-dir conf [overrides]`` is a ``@hydra.main`` app: it composes the
user's ``conf/config.yaml`` (or any ``--config-name``, e.g. the lightning-hydra-template's
``configs/train.yaml``) and runs :func:`export_from_config`. Hydra's own flags work (``--cfg job``,
``-m export.opset=17,18``, ``--info``). onnxport selects its own Hydra settings ahead of the
user's overrides (:data:`onnxport.hydra_config.HYDRA_OVERRIDES`): no run directory, no log file,
its own logging, so the command behaves as a DVC stage should. Under ``-m`` give each run its
own file, e.g. ``output=models/model_${export.opset}.onnx``.

``onnxport validate`` composes the same config with Hydra's compose API (it is not a Hydra app:
Hydra's flags do not apply) and re-validates a file.

Only the keys onnxport reads are resolved (``checkpoint``, ``output``, ``model``,
``trust_checkpoint``, ``export``), and config, paths, the checkpoint's existence and the opset
range are checked before torch is imported. Each phase prints one line with its time on stderr.

Errors are one line on stderr. Exit status: 0 ok, 1 validation failed (nothing was published),
2 bad config or input, 3 unexpected internal error. ``HYDRA_FULL_ERROR=1`` shows the traceback.

Module imports are standard library only: ``inspect`` must not pay for torch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from onnxport.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    ConfigError,
    InputError,
    OnnxportError,
    one_line,
)
from onnxport.progress import is_progress, phase

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from onnxport.workflow import ExportResult

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = "conf"
DEFAULT_CONFIG_NAME = "config"
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"

EXIT_CODES = """\
exit codes: 0 ok, 1 validation failed (nothing published), 2 bad config or input,
            3 unexpected internal error (HYDRA_FULL_ERROR=1 shows the traceback), 130 interrupted
"""

USAGE = f"""\
usage: onnxport export [--config-dir DIR] [--config-name NAME] [hydra flags] [overrides ...]
       onnxport inspect FILE [--json]
       onnxport validate FILE [--checkpoint PATH] [--config-dir DIR] [--report PATH] [overrides ...]
       onnxport triton FILE --repo DIR [--name NAME] [--version N] [--card] [--metrics JSON]

export    export a checkpoint to a validated ONNX file (a Hydra app; see `onnxport export --help`)
inspect   show an ONNX file's signature, opset, sizes, operators and provenance (no torch)
validate  re-validate an ONNX file against a checkpoint and write the JSON report
triton    lay the file out as a Triton model repository (config.pbtxt), with a model card on request

{EXIT_CODES}"""


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
        with progress_to_stderr():
            return command(args[1:])
    except SystemExit as stop:  # argparse and `--help` exit; callers of main() get the status
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except KeyboardInterrupt:
        print(f"onnxport {args[0]}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if _full_errors_requested():
            raise
        return _report_error(args[0], error)


def _report_error(command: str, error: Exception) -> int:
    """Print ``error`` as one line on stderr (no terminal control characters); return its exit status."""
    error = _as_config_error(error) or error
    if isinstance(error, OnnxportError):
        line, status = f"onnxport {command}: error: {cli_syntax(str(error))}", error.exit_code
    else:
        line = (
            f"onnxport {command}: unexpected {type(error).__name__}: {one_line(error)} "
            f"(a bug or a crash onnxport does not recognise; set {FULL_ERROR_ENV}=1 for the traceback)"
        )
        status = EXIT_INTERNAL_ERROR
    print(printable(line), file=sys.stderr)
    return status


def printable(text: str) -> str:
    """``text`` on one line with ANSI escapes and other control characters removed."""
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]", "", text)
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def cli_syntax(text: str) -> str:
    """A fix written for the Python API (``trust_checkpoint=True``) as the CLI spells it."""
    text = re.sub(r"\b([A-Za-z_][\w.]*)=True\b", r"\1=true", text)
    text = re.sub(r"\b([A-Za-z_][\w.]*)=False\b", r"\1=false", text)
    text = re.sub(r"\b([A-Za-z_][\w.]*)=None\b", r"\1=null", text)
    return re.sub(r"\bmodel_class=[\"']([\w.:]+)[\"']", r"model=\1", text)


# -- progress -----------------------------------------------------------------------------


@contextlib.contextmanager
def progress_to_stderr() -> Iterator[None]:
    """Show onnxport's progress lines and warnings on stderr, as ``onnxport: <message>``.

    Each phase logs ``<phase> done in X s`` (:mod:`onnxport.progress`) when it finishes;
    those INFO records and every WARNING or worse are shown as
    they come (other INFO records, e.g. the validation table, are the result on stdout).
    Removed again on exit, so ``main()`` can run in-process.
    """
    logger = logging.getLogger("onnxport")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onnxport: %(message)s"))
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or is_progress(record))
    saved_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


# -- export -------------------------------------------------------------------------------


def export_from_config(cfg: DictConfig) -> ExportResult:
    """Export the model a composed config describes; the work behind ``onnxport export``.

    ``cfg`` holds ``model`` (a ``_target_`` mapping built with Hydra, or the class path of a
    LightningModule), ``checkpoint``, ``trust_checkpoint`` (default false), ``output`` and
    ``export`` (the :class:`~onnxport.config.ExportConfig` fields); nothing else in ``cfg`` is
    read or resolved. Everything that can be checked without torch is checked first.
    """
    from onnxport.hydra_config import check_model, check_paths, model_from_config, read_command_config

    command = read_command_config(cfg)
    check_paths(command)
    check_model(command)

    import onnxport
    from onnxport.hashing import file_sha256

    with phase("load"):
        model = model_from_config(command)
    return onnxport.export(
        model, None, command.output, config=command.export, checkpoint_sha256=file_sha256(command.checkpoint)
    )


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
    # A fallback was said once, as it happened (with its log's path); this line names the exporter.
    print(
        f"onnxport: wrote {result.path} ({result.size_bytes} bytes, sha256 {result.sha256[:12]}, "
        f"{result.exporter} exporter, opset {result.config.opset}, {result.seconds:.1f} s)"
    )
    if validation is not None:
        print(validation.summary())
        print(f"onnxport: validation report {result.report_path}")
    else:
        print("onnxport: validation disabled (export.validation.enabled=false)")


def _export_command(args: list[str]) -> int:
    from hydra import main as hydra_main

    from onnxport.hydra_config import PACKAGED_CONF, provide_project_root, register_configs

    _import_from_cwd()
    register_configs()
    provide_project_root()
    if {"-h", "--help"} & set(args):
        print(export_keys_help())
    exit_codes = [0]
    task = functools.partial(_export_task, exit_codes=exit_codes, full_errors=_full_errors_requested())
    app = hydra_main(version_base=None, config_path=str(PACKAGED_CONF), config_name=DEFAULT_CONFIG_NAME)(task)
    with _hydra_raises(), _argv("onnxport export", _hydra_argv(args)), _hydra_config_restored():
        app()
    return max(exit_codes)


@contextlib.contextmanager
def _hydra_config_restored() -> Iterator[None]:
    """Run as a fresh process would: no HydraConfig from an earlier Hydra run in this process.

    Hydra leaves a run's config in the HydraConfig singleton (and ``${hydra:...}`` would resolve
    from it); ``main()`` may run in-process, so the singleton is cleared, then restored.
    """
    from hydra.core.hydra_config import HydraConfig

    saved = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = None
    try:
        yield
    finally:
        HydraConfig.instance().cfg = saved


def export_keys_help() -> str:
    """onnxport's own keys with their meaning from the schema docstrings, for ``export --help``."""
    from onnxport.config import REFERENCE_SECTIONS, option_rows
    from onnxport.hydra_config import CommandConfig

    rows = [row for row in option_rows(CommandConfig, "") if row[0] != "export"]
    for cls, prefix in REFERENCE_SECTIONS:
        rows += option_rows(cls, prefix)
    lines = [
        "onnxport export [--config-dir DIR] [--config-name NAME] [hydra flags] [key=value ...]",
        "",
        "Export the checkpoint a Hydra config names to a validated ONNX file. onnxport reads these",
        "keys and no others; set them in the config or on the command line as key=value:",
        "",
    ]
    for key, default, meaning in rows:
        shown = f" (default {default})" if default not in ("", '""') else ""
        lines.append(f"  {key}{shown}")
        lines += textwrap.wrap(
            meaning.replace("``", "`"), width=96, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    lines += ["", EXIT_CODES.rstrip(), "", "Hydra's own help follows.", ""]
    return "\n".join(lines)


def _hydra_argv(args: list[str]) -> list[str]:
    """Put onnxport's Hydra settings in front of the user's overrides, keeping Hydra's flags.

    argparse takes overrides as one run of positionals, so they are moved ahead of the flags.
    """
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    from onnxport.hydra_config import HYDRA_OVERRIDES, own_key_overrides

    parsed = get_args_parser().parse_args(args)
    flags = list(args)
    size = len(parsed.overrides)
    for start in range(len(flags) - size + 1):
        if size and flags[start : start + size] == parsed.overrides:
            del flags[start : start + size]
            break
    config_dir = parsed.config_dir
    if config_dir is None:
        if Path(DEFAULT_CONFIG_DIR).is_dir():
            config_dir = DEFAULT_CONFIG_DIR
            flags += ["--config-dir", DEFAULT_CONFIG_DIR]
        elif not (parsed.help or parsed.hydra_help):
            raise ConfigError(
                f"no --config-dir given and there is no ./{DEFAULT_CONFIG_DIR} in {Path.cwd()}",
                fix="run from the project root or pass --config-dir DIR (the dir holding config.yaml)",
            )
    return [*HYDRA_OVERRIDES, *own_key_overrides(parsed.overrides, config_dir), *flags]


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
    text = f"{error}{detail}"
    unknown = _unknown_key(text)
    if unknown is not None:
        key, close = unknown
        if close:
            return ConfigError(
                f"unknown key {key}; did you mean {close}? ({' '.join(text.split())})",
                fix=f"write {close}=...",
            )
    if isinstance(error, MissingConfigException):
        fix = "check --config-dir, --config-name and the config group choices in the defaults lists"
    else:
        fix = "check the key and value against `onnxport export --help` and `onnxport export --cfg job`"
    return ConfigError(text, fix=fix)


def _unknown_key(text: str) -> tuple[str, str | None] | None:
    """The unknown key an override or config names, and the closest key onnxport reads."""
    import difflib

    from onnxport.config import REFERENCE_SECTIONS
    from onnxport.hydra_config import COMMAND_KEYS

    match = re.search(r"Could not override '([\w.\[\]]+)'", text)
    if match:
        key = match.group(1)
    else:
        match = re.search(r"Key '(\w+)' not in '(\w+)'", text)
        if not match:
            return None
        prefixes = {cls.__name__: prefix for cls, prefix in REFERENCE_SECTIONS}
        key = prefixes.get(match.group(2), "") + match.group(1)
    known = [*COMMAND_KEYS]
    for cls, prefix in REFERENCE_SECTIONS:
        if "<" not in prefix and "[" not in prefix:
            known += [f"{prefix}{name}" for name in cls.__dataclass_fields__]  # type: ignore[attr-defined]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    return key, (close[0] if close and close[0] != key else None)


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
    from onnxport.hydra_config import (
        check_paths,
        check_writable_path,
        compose,
        model_from_config,
        read_command_config,
    )
    from onnxport.publish import make_directory
    from onnxport.report import revalidation_report_path

    parser = argparse.ArgumentParser(
        prog="onnxport validate",
        description="Re-validate an ONNX file against a checkpoint, with the model config used at export. "
        "The config is composed with Hydra's compose API (Hydra's own flags do not apply).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", help="the .onnx file to check")
    parser.add_argument("--checkpoint", help="checkpoint to compare against (default: the config's)")
    parser.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, help="the Hydra config dir (conf)")
    parser.add_argument("--config-name", default=DEFAULT_CONFIG_NAME, help="primary config name (config)")
    parser.add_argument(
        "--report",
        help="where the JSON report goes (default: <FILE stem>.revalidation.json beside FILE)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. export.validation.atol=1e-3")
    options = parser.parse_intermixed_args(args)  # FILE, flags and overrides in any order
    if not Path(options.file).is_file():
        raise InputError(f"{options.file} does not exist", fix="pass the path of an existing .onnx file")

    _import_from_cwd()
    if not Path(options.config_dir).is_dir():
        raise ConfigError(f"config dir {options.config_dir!r} does not exist", fix="pass --config-dir DIR")
    with _hydra_raises(), _hydra_config_restored():
        cfg = compose(options.config_dir, options.config_name, options.overrides)
        command = read_command_config(cfg, overrides={"checkpoint": options.checkpoint})
    check_paths(command, need_output=False)
    # Not export.validation.report: that is the export's own report (a DVC metric), and
    # rewriting it would make `dvc repro` run the stage again.
    report_path = Path(options.report or revalidation_report_path(options.file))
    check_writable_path("--report", report_path)
    make_directory("--report", report_path.parent)

    import onnxport
    from onnxport.errors import ValidationError

    with phase("load"):
        model = model_from_config(command)
    try:
        report = onnxport.validate(options.file, model, None, config=command.export)
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
