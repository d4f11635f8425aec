"""Lightning callback: every training run ends with a validated ONNX file, also under DDP.

The callback is a thin door into :func:`onnxport.export`: it turns the Trainer's
world (log directory, checkpoints, first batch, ranks, loggers) into arguments
and calls the same pipeline the API and the CLI call.

Two Lightning packages ship the same Trainer under different class hierarchies:
``pytorch_lightning`` and the unified ``lightning.pytorch``. The callback
subclasses the ``Callback`` of the package the program has already imported
(``pytorch_lightning`` when both or neither are), so ``isinstance`` checks hold
for the user's Trainer and importing this module never imports a second
Lightning. The Trainer itself only calls the hooks, so a callback built on one
package also runs in the other's Trainer when passed in the ``callbacks`` list.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from onnxport.config import ExportConfig
from onnxport.datasource import first_batches, needs_door_samples, single_loader
from onnxport.errors import CheckpointError, ConfigError, ExportError, InputError, one_line

if "lightning.pytorch" in sys.modules and "pytorch_lightning" not in sys.modules:
    from lightning.pytorch import Callback
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
else:
    try:
        from pytorch_lightning import Callback
        from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
    except ImportError:  # only the unified `lightning` package is installed
        from lightning.pytorch import Callback
        from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from torch import nn

    from onnxport.workflow import ExportResult

ON_ERROR_POLICIES = ("raise", "warn")
CHECKPOINT_ALIASES = ("best", "last")
DEFAULT_FILENAME = "model.onnx"


class OnnxExportCallback(Callback):
    r"""Export the trained model to a validated ONNX file when ``fit`` ends.

    Args:
        output: The file to write. ``None``: ``model.onnx`` in the Trainer's ``log_dir``
            (``default_root_dir`` without a logger), resolved in ``setup()`` and agreed across ranks.
        ckpt_path: Which weights to export, with the meaning ``trainer.test(ckpt_path=...)`` gives it:
            ``None`` the module's current weights, ``"best"`` / ``"last"`` from the Trainer's
            ``ModelCheckpoint``, or a checkpoint file. Checkpoint weights are loaded into a copy of
            the module, so the module the Trainer holds is never changed, and the checkpoint's sha256
            is recorded in the file. ``"best"`` without a ``ModelCheckpoint``, or ``"last"`` without
            one that has ``save_last``, is refused in ``setup()``, before training starts. Paths
            are opened through fsspec as Lightning opens them, so ``s3://...`` works where fsspec
            has the filesystem. Only the weights are read from the file, and nothing in it is
            imported or run, whatever else it pickles (Hydra partials, optimizer classes, ...).
        on_error: ``"raise"`` ends the run when the export or its validation fails; ``"warn"`` warns
            and lets the run finish. Either way nothing is written to ``output`` on failure.
        trust_checkpoint: Unpickle the checkpoint fully (runs code from the file). Only needed
            when its ``state_dict`` itself holds pickled objects; a real bool.
        every_n_epochs: Also export at the end of every n-th training epoch (``None``: only at the
            end of ``fit``). The checkpoint saved after that epoch then records the export; as
            ``ModelCheckpoint`` runs after the other callbacks, ``ckpt_path`` ``"best"`` / ``"last"``
            sees the checkpoints saved before that epoch ended.
        config: An :class:`~onnxport.config.ExportConfig` or a mapping of its fields.
        \**export_options: ``ExportConfig`` fields (``opset``, ``exporter``, ``dynamic_axes``,
            ``inputs``, ``validation={"atol": ...}``, ...); they override ``config``.

    Example inputs come in the order every door uses
    (:func:`onnxport.inputs.choose_example_inputs`): ``inputs`` in the config, else the
    module's ``example_input_array``, else the first batch of the train dataloader after the
    module's batch-transfer hooks: a tuple or list batch gives its first element; a dict
    batch gives the entries whose keys name ``forward`` parameters, or the whole dict
    when none do (``forward`` takes one dict).

    Variants (``variants=[...]``, see :class:`~onnxport.config.VariantConfig`) are made from the
    run's own data: a static int8 variant without ``calibration.npz`` / ``datamodule``
    calibrates on the first ``calibration.batches`` batches of the ``calibration.split`` loader
    (``val`` by default), and int8 variants are also judged on the first batches of the val
    loader unless ``validation.data`` is set; both drawn like the first train batch, leaving the
    training RNG and the loader's own generator as they were.

    Under DDP the export and its validation run once, on global rank 0, while the other
    ranks wait; if rank 0 fails, every rank raises. Like ``ModelCheckpoint``, the callback
    does nothing under ``fast_dev_run`` or while the Trainer runs its sanity check. Each phase
    (weights loaded, inputs chosen, and the pipeline's own steps) is reported through
    ``rank_zero_info`` as it finishes.

    Attributes:
        last_result: The :class:`~onnxport.workflow.ExportResult` of the last export (global rank 0).
        last_path: Path of the last exported file (every rank; kept in checkpoints).
        last_sha256: Its sha256 (every rank; kept in checkpoints).

    Raises:
        ConfigError: an option is unknown or outside its allowed values.

    Example::

        >>> from pytorch_lightning import Trainer
        >>> from onnxport import OnnxExportCallback
        >>> export = OnnxExportCallback("model.onnx", ckpt_path="best", opset=18, validation={"atol": 1e-4})
        >>> trainer = Trainer(callbacks=[export])
        >>> # after trainer.fit(...): export.last_result.path, export.last_result.validation.passed

    Two instances sit in one Trainer when their ``output`` differs (their checkpoint state is
    keyed by it).
    """

    def __init__(
        self,
        output: Optional[Union[str, os.PathLike]] = None,
        *,
        ckpt_path: Optional[Union[str, os.PathLike]] = None,
        on_error: str = "raise",
        every_n_epochs: Optional[int] = None,
        trust_checkpoint: bool = False,
        config: Optional[Union[ExportConfig, Mapping[str, Any]]] = None,
        **export_options: Any,
    ) -> None:
        super().__init__()
        if output is not None and not isinstance(output, (str, os.PathLike)):
            raise ConfigError(
                f"output={output!r} is not a path", fix="pass a file path such as 'model.onnx', or None"
            )
        if ckpt_path is not None and not isinstance(ckpt_path, (str, os.PathLike)):
            raise ConfigError(
                f"ckpt_path={ckpt_path!r} is not a checkpoint",
                fix="use None (current weights), 'best', 'last' or a checkpoint file path",
            )
        if on_error not in ON_ERROR_POLICIES:
            raise ConfigError(
                f"on_error={on_error!r} is not allowed; choose one of {', '.join(ON_ERROR_POLICIES)}",
                fix="set on_error to 'raise' or 'warn'",
            )
        if every_n_epochs is not None and (
            isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1
        ):
            raise ConfigError(
                f"every_n_epochs={every_n_epochs!r} is not a positive integer",
                fix="use an integer >= 1, or None to export only when fit ends",
            )
        from onnxport.load import check_trust_flag

        check_trust_flag(trust_checkpoint)
        self.output = os.fspath(output) if output is not None else None
        self.ckpt_path = os.fspath(ckpt_path) if ckpt_path is not None else None
        self.on_error = on_error
        self.every_n_epochs = every_n_epochs
        self.trust_checkpoint = trust_checkpoint
        self.config = ExportConfig.coerce(config, **export_options)
        self.last_result: Optional[ExportResult] = None
        self.last_path: Optional[str] = None
        self.last_sha256: Optional[str] = None
        self._output_path: Optional[Path] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(output=self.output)

    @property
    def output_path(self) -> Optional[Path]:
        """The file this callback writes, once ``setup()`` has resolved it."""
        return self._output_path

    # -- hooks ------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Every rank must call this: trainer.log_dir and broadcast are collectives.
        if self.output is not None:
            path = Path(self.output).expanduser().resolve()
        else:
            path = Path(trainer.log_dir or trainer.default_root_dir).resolve() / DEFAULT_FILENAME
        self._output_path = Path(trainer.strategy.broadcast(str(path)))
        # Refused now rather than after hours of training: without a ModelCheckpoint the run ends
        # with neither an export nor a checkpoint to export later.
        _check_checkpoint_source(trainer, self.ckpt_path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skipped(trainer):
            return
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._export_on_rank_zero(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skipped(trainer):
            rank_zero_info("OnnxExportCallback: no export under fast_dev_run (as ModelCheckpoint saves none)")
            return
        self._export_on_rank_zero(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"last_path": self.last_path, "last_sha256": self.last_sha256}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_path = state_dict.get("last_path", self.last_path)
        self.last_sha256 = state_dict.get("last_sha256", self.last_sha256)

    @staticmethod
    def _skipped(trainer: pl.Trainer) -> bool:
        """As ``ModelCheckpoint``: a debugging run or the sanity check leaves no file behind."""
        return bool(trainer.fast_dev_run) or trainer.sanity_checking

    # -- export ---------------------------------------------------------------------------------

    def _export_on_rank_zero(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Export on global rank 0; every rank learns the outcome, so no rank is left hanging."""
        if self._output_path is None:  # hooks called without setup(), e.g. by hand; a collective
            self.setup(trainer, pl_module, "fit")
        outcome: dict[str, Any] = {"error": None, "path": None, "sha256": None}
        error: Optional[BaseException] = None
        if trainer.is_global_zero:
            try:
                result = self._export(trainer, pl_module)
            except Exception as exc:
                error = exc
                outcome["error"] = f"{type(exc).__name__}: {exc}"
            else:
                outcome.update(path=str(result.path), sha256=result.sha256)
        # The broadcast is also the barrier: other ranks wait here until rank 0 is done.
        outcome = trainer.strategy.broadcast(outcome, src=0)

        if outcome["error"] is not None:
            if self.on_error == "warn":
                rank_zero_warn(
                    f"OnnxExportCallback: export failed, nothing was written to {self._output_path}: "
                    f"{outcome['error']}"
                )
                return
            if error is not None:
                raise error
            raise ExportError(
                f"the ONNX export on global rank 0 failed: {outcome['error']}",
                fix="see the error raised on rank 0",
            )
        self.last_path, self.last_sha256 = outcome["path"], outcome["sha256"]
        if trainer.is_global_zero:
            self._log_result(trainer, self.last_result)

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ExportResult:
        import torch

        from onnxport.inputs import choose_example_inputs
        from onnxport.model_state import preserved_state
        from onnxport.progress import phase
        from onnxport.workflow import export

        with _progress_through_rank_zero_info():
            model, checkpoint_sha256 = pl_module, None
            if self.ckpt_path is not None:
                path = _resolve_ckpt_path(trainer, self.ckpt_path)
                rank_zero_info(f"OnnxExportCallback: exporting a checkpoint (the weights of {path})")
                with phase("load"):
                    model, checkpoint_sha256 = self._checkpoint_copy(trainer, pl_module, path), _sha256(path)
            # Drawing the first batch seeds a sampler and workers from the global RNG; forking it keeps
            # the shuffling of the epochs after an export (and of a later fit) as if nothing happened.
            with torch.random.fork_rng(devices=[]), preserved_state(model):
                example_inputs, source = choose_example_inputs(
                    model,
                    None,
                    self.config,
                    fallback=lambda: _first_batch_inputs(trainer, pl_module),
                    fallback_source="the first train batch",
                )
                rank_zero_info(f"OnnxExportCallback: example inputs from {source}")
                result = export(
                    model,
                    example_inputs,
                    self._output_path,
                    config=self.config,
                    checkpoint_sha256=checkpoint_sha256,
                    calibration_samples=_calibration_batches(trainer, pl_module, self.config),
                    validation_samples=_validation_batches(trainer, pl_module, self.config),
                )
        self.last_result = result
        return result

    def _checkpoint_copy(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: str) -> nn.Module:
        """A copy of the module holding the checkpoint's weights; the Trainer's module stays as it is."""
        from onnxport.load import read_state_dict

        # Only the weights: nothing else the checkpoint pickles is imported or run.
        state_dict = read_state_dict(path, trust_checkpoint=self.trust_checkpoint)
        # The memo keeps the copy from dragging the Trainer (loaders, process groups) along.
        module = _uncompiled(copy.deepcopy(pl_module, {id(trainer): None}))
        try:
            module.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(
                f"ckpt_path={path!r} does not fit {type(pl_module).__name__}: {one_line(exc)}",
                fix="pass a checkpoint of this LightningModule",
            ) from exc
        return module

    def _log_result(self, trainer: pl.Trainer, result: ExportResult) -> None:
        metrics = {"export/seconds": float(result.seconds), "export/size_mb": result.size_bytes / 1e6}
        report = result.validation
        if report is not None:
            metrics["export/passed"] = float(report.passed)
            metrics["export/max_abs_diff"] = report.worst("max_abs_diff")
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

        exporter = result.exporter + (
            f" (fallback: {result.fallback_reason})" if result.fallback_reason else ""
        )
        if report is None:
            checked = "not validated"
        else:
            checked = "validation passed" if report.passed else "validation FAILED (on_mismatch=warn)"
            checked += f", max_abs_diff={metrics['export/max_abs_diff']:.3g}"
        rank_zero_info(
            f"OnnxExportCallback: wrote {result.path} with {exporter}, "
            f"{metrics['export/size_mb']:.2f} MB in {result.seconds:.1f} s; {checked}"
        )


def _check_checkpoint_source(trainer: pl.Trainer, ckpt_path: Optional[str]) -> None:
    """``best`` needs a ModelCheckpoint, ``last`` one with ``save_last``; a file may appear while training."""
    if ckpt_path == "best" and trainer.checkpoint_callback is None:
        raise CheckpointError(
            "ckpt_path='best' but the Trainer has no ModelCheckpoint",
            fix="add ModelCheckpoint(monitor=...) to the Trainer's callbacks, or use ckpt_path=None",
        )
    if ckpt_path == "last" and not any(
        getattr(cb, "save_last", False) for cb in trainer.checkpoint_callbacks
    ):
        raise CheckpointError(
            "ckpt_path='last' but no ModelCheckpoint of the Trainer has save_last set",
            fix="use ModelCheckpoint(save_last=True), or ckpt_path=None for the current weights",
        )


def _resolve_ckpt_path(trainer: pl.Trainer, ckpt_path: str) -> str:
    """``best`` / ``last`` / a file, resolved as ``trainer.test(ckpt_path=...)`` resolves them."""
    if ckpt_path == "best":
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best:
            raise CheckpointError(
                "ckpt_path='best' but the Trainer's ModelCheckpoint saved no best checkpoint",
                fix="add ModelCheckpoint(monitor=...) to the Trainer's callbacks, or use ckpt_path=None",
            )
        return best
    if ckpt_path == "last":
        # As Lightning's _parse_ckpt_path: the newest existing last checkpoint, on any fsspec filesystem.
        modified = {}
        for callback in trainer.checkpoint_callbacks:
            last = getattr(callback, "last_model_path", "")
            if last:
                fs, remote = _filesystem(last)
                if fs.exists(remote):
                    modified[last] = fs.modified(remote)
        if not modified:
            raise CheckpointError(
                "ckpt_path='last' but the Trainer's ModelCheckpoint saved no last checkpoint",
                fix="use ModelCheckpoint(save_last=True), or ckpt_path=None for the current weights",
            )
        return max(modified, key=modified.get)
    fs, remote = _filesystem(ckpt_path)
    if not fs.isfile(remote):
        what = "a directory" if fs.isdir(remote) else "not a file"
        raise CheckpointError(
            f"ckpt_path={ckpt_path!r} is {what}",
            fix=f"use None, {', '.join(repr(a) for a in CHECKPOINT_ALIASES)} or an existing checkpoint path",
        )
    return ckpt_path


def _filesystem(path: str) -> tuple[Any, str]:
    """The fsspec filesystem holding ``path`` (local for plain paths) and the path within it."""
    from fsspec.core import url_to_fs

    return url_to_fs(path)


def _sha256(path: str) -> str:
    """sha256 of a local or fsspec checkpoint, read in chunks."""
    from onnxport.hashing import stream_sha256

    fs, remote = _filesystem(path)
    with fs.open(remote, "rb") as handle:
        return stream_sha256(handle)


def _uncompiled(module: nn.Module) -> nn.Module:
    """A ``torch.compile``'d LightningModule back to its own methods (Lightning's ``to_uncompiled``).

    Lightning runs a compiled module through dynamo-wrapped methods of the *original* module set
    on the instance; a deep copy keeps those closures and would compute with the Trainer's weights.
    """
    import importlib

    lightning_2 = any(cls.__module__.startswith("lightning.pytorch.") for cls in type(module).__mro__)
    package = "lightning.pytorch" if lightning_2 else "pytorch_lightning"
    to_uncompiled = importlib.import_module(f"{package}.utilities.compile").to_uncompiled
    try:
        return to_uncompiled(module)
    except ValueError:  # "required to be a compiled LightningModule": nothing to undo
        return module


class _RankZeroInfo(logging.Handler):
    """Phase lines through ``rank_zero_info``; warnings to the same Lightning logger at their level.

    A phase line is what the CLI shows on stderr (``<phase> done in X s``); other INFO records,
    such as the validation table, are summed up by the callback's own closing line instead.
    """

    def emit(self, record: logging.LogRecord) -> None:
        from onnxport.progress import is_progress

        message = f"OnnxExportCallback: {record.getMessage()}"
        if record.levelno >= logging.WARNING:  # the export runs on global rank 0 only
            package = Callback.__module__.partition(".callbacks")[0]
            logging.getLogger(f"{package}.utilities.rank_zero").log(record.levelno, message)
        elif is_progress(record):
            rank_zero_info(message)


@contextmanager
def _progress_through_rank_zero_info() -> Iterator[None]:
    """The pipeline's phase lines (``onnxport`` loggers) through Lightning's rank-zero log."""
    log = logging.getLogger("onnxport")
    saved = log.level, log.propagate
    handler = _RankZeroInfo()
    log.addHandler(handler)
    # Not also through the root logger: a Hydra-configured root would print each line twice.
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _first_batch_inputs(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The input part of the first train batch, as ``training_step`` sees it, on the module's device."""
    loader = single_loader(trainer.train_dataloader)  # several train loaders: the first
    if loader is None:
        raise InputError(
            f"no example inputs for {type(pl_module).__name__}: the config has no inputs, "
            "example_input_array is None and the Trainer has no train dataloader",
            fix="set self.example_input_array in the LightningModule, or pass inputs=[{name, shape}]",
        )
    return first_batches(loader, 1, pl_module)[0]


def _calibration_batches(trainer: pl.Trainer, pl_module: pl.LightningModule, config: ExportConfig) -> Any:
    """The first ``calibration.batches`` batches of the ``calibration.split`` loader, for static int8.

    Only when a static int8 variant has no data of its own (``npz`` or ``datamodule``): then the
    run's own data is the calibration set, read through the Trainer's loader of that split (or
    its datamodule's / module's ``<split>_dataloader()`` when the Trainer holds none), as
    ``forward`` takes it. ``None`` when no variant needs it.
    """
    wanted = [variant.calibration for variant in config.variants if needs_door_samples(variant)]
    if not wanted:
        return None
    split = wanted[0].split  # one set of samples serves every static variant: the first one's split
    count = max(calibration.batches for calibration in wanted if calibration.split == split)
    loader = _split_loader(trainer, pl_module, split)
    batches = first_batches(loader, count, pl_module)
    rank_zero_info(f"OnnxExportCallback: calibrating on {len(batches)} batches of the {split} loader")
    return batches


def _validation_batches(trainer: pl.Trainer, pl_module: pl.LightningModule, config: ExportConfig) -> Any:
    """Real inputs for int8 variants to be judged on: the first batches of the run's val loader.

    int8 is judged by agreement on real cases when there are any; on generated inputs, far from
    the data it was calibrated on, a good int8 file can look broken. ``None`` (generated cases
    only) when no variant is int8, ``export.validation.data`` names data already, validation is
    off, or the run has no val loader. As many batches as the int8 variants calibrate on.
    """
    int8 = [variant for variant in config.variants if variant.precision == "int8"]
    if not int8 or config.validation.data or not config.validation.enabled:
        return None
    try:
        loader = _split_loader(trainer, pl_module, "val")
    except InputError:
        return None
    batches = first_batches(loader, max(variant.calibration.batches for variant in int8), pl_module)
    rank_zero_info(f"OnnxExportCallback: validating on {len(batches)} batches of the val loader too")
    return batches


def _split_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> Any:
    """The first ``split`` loader: the Trainer's, else its datamodule's or module's."""
    held = {"train": "train_dataloader", "val": "val_dataloaders", "test": "test_dataloaders"}[split]
    loader = single_loader(getattr(trainer, held, None))
    for source in (trainer.datamodule, pl_module):
        if loader is not None:
            break
        method = getattr(source, f"{split}_dataloader", None)
        if callable(method):
            try:
                loader = single_loader(method())
            except Exception:  # Lightning's default hook raises "not implemented"
                loader = None
    if loader is None:
        raise InputError(
            f"static int8 calibration reads the {split} loader, but the Trainer, its datamodule "
            f"and {type(pl_module).__name__} have no {split} dataloader",
            fix="set calibration.split to a split the run has (train, val, test), "
            "or calibration.npz to an .npz of inputs",
        )
    return loader
