"""Real data for calibration and validation: the user's batches, never random unless asked.

One rule turns a batch into model inputs (:func:`input_part`), for the Lightning callback's
first train batch and for a datamodule's loader alike. Static int8 calibration reads, in order:

1. ``calibration_samples`` a door passed (the callback: the validation loader's first batches);
2. ``calibration.npz``: arrays named like the graph inputs, samples on axis 0, cut into
   ``calibration.batches`` batches;
3. ``calibration.datamodule``: a Hydra ``_target_`` config; ``prepare_data``, ``setup``, then
   the first ``calibration.batches`` batches of ``<split>_dataloader()``;
4. generated inputs like the validation ones, only with ``calibration.generated: true``.

Without any, :func:`check_calibration` raises a ConfigError before anything is exported.
``export.validation.data`` is an ``.npz`` like the calibration one whose batches become extra
validation cases (:func:`npz_batches`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from onnxport.config import CalibrationConfig, ExportConfig, VariantConfig
from onnxport.errors import ConfigError, InputError

if TYPE_CHECKING:
    from onnxport.inputs import ModelInputs

Feed = dict[str, np.ndarray]


# -- batches to inputs -------------------------------------------------------------------------


def input_part(batch: Any, module: Any) -> Any:
    """The part of a loader's batch that ``forward`` takes: the first item of a tuple/list batch,
    the keys ``forward`` names of a dict batch (all of it when it names none), else the batch."""
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        import inspect

        parameters = inspect.signature(module.forward).parameters
        named = {key: value for key, value in batch.items() if key in parameters}
        return named or dict(batch)
    return batch


def single_loader(loaders: Any) -> Any:
    """The first loader of what a Lightning hook returned (a loader, or a list/dict of them);
    ``None`` when there is none."""
    while isinstance(loaders, (Mapping, list, tuple)) and loaders:
        loaders = next(iter(loaders.values())) if isinstance(loaders, Mapping) else loaders[0]
    return None if isinstance(loaders, (Mapping, list, tuple)) else loaders


def first_batches(loader: Iterable[Any], count: int, module: Any) -> list[Any]:
    """The input parts of the first ``count`` batches of ``loader``, as the module's step sees them:
    a LightningModule's batch-transfer hooks run (on its device) before :func:`input_part`.

    The torch generators the loader and its samplers draw from are left as they were, so reading
    batches for an export does not change the shuffling of the epochs after it.
    """
    batches = []
    with _generators_kept(loader):
        for batch in itertools.islice(loader, count):
            if hasattr(module, "transfer_batch_to_device"):
                batch = module.on_before_batch_transfer(batch, 0)
                batch = module.transfer_batch_to_device(batch, module.device, 0)
                batch = module.on_after_batch_transfer(batch, 0)
            batches.append(input_part(batch, module))
    return batches


@contextlib.contextmanager
def _generators_kept(loader: Any) -> Iterator[None]:
    """Restore the state of the torch generators a loader and its samplers draw from."""
    holders = [
        loader,
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ]
    generators = {id(g): g for h in holders if (g := getattr(h, "generator", None)) is not None}
    states = {key: generator.get_state() for key, generator in generators.items()}
    try:
        yield
    finally:
        for key, generator in generators.items():
            generator.set_state(states[key])


def npz_batches(
    path: str | os.PathLike[str], names: Sequence[str], batches: Optional[int], key: str
) -> list[Feed]:
    """The arrays of ``path`` named like ``names``, cut on axis 0 into ``batches`` feeds
    (``None``: one feed per 32 samples)."""
    file = Path(path).expanduser()
    try:
        with np.load(file, allow_pickle=False) as arrays:
            available = list(arrays.files)
            missing = [name for name in names if name not in available]
            if missing:
                raise ConfigError(
                    f"{key}={str(path)!r} has arrays {available}, not the graph inputs {missing}",
                    fix=f"save the .npz with one array per graph input, named {list(names)}",
                )
            data = {name: arrays[name] for name in names}
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{key}={str(path)!r} cannot be read as an .npz ({error})",
            fix="give the path of a numpy .npz file (np.savez) with one array per graph input",
        ) from None
    sizes = {len(array) for array in data.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ConfigError(
            f"{key}={str(path)!r} arrays hold {sorted(sizes)} samples on axis 0",
            fix="give every input the same number of samples (at least one) on axis 0",
        )
    (total,) = sizes
    count = min(batches, total) if batches else -(-total // 32)
    bounds = np.linspace(0, total, count + 1).round().astype(int)
    return [
        {name: array[start:stop] for name, array in data.items()}
        for start, stop in itertools.pairwise(bounds)
    ]


def feeds(model: Any, samples: Iterable[Any], example: ModelInputs, config: ExportConfig) -> list[Feed]:
    """ONNX Runtime feeds of ``samples`` (input structures as ``forward`` takes them), named as
    ``example`` is: each sample is bound to ``forward`` as the example inputs were."""
    from onnxport.inputs import prepare_inputs

    named = ExportConfig.coerce(config, input_names=example.names)
    return [prepare_inputs(model, sample, named).feed() for sample in samples]


def as_inputs(feed: Feed, example: ModelInputs) -> ModelInputs:
    """A feed (name -> array) in ``example``'s structure, for the eager model."""
    import torch

    tensors = example.tensors()
    try:
        leaves = [
            torch.from_numpy(np.asarray(feed[name])).to(device=tensor.device, dtype=tensor.dtype)
            for name, tensor in zip(example.names, tensors, strict=True)
        ]
    except KeyError as error:
        raise InputError(
            f"a data batch has no input {error.args[0]!r} (it has {sorted(feed)})",
            fix=f"name the arrays like the graph inputs: {example.names}",
        ) from None
    return example.with_tensors(leaves)


# -- calibration -------------------------------------------------------------------------------


def needs_calibration(variant: VariantConfig) -> bool:
    return variant.precision == "int8" and variant.quantization == "static"


def needs_door_samples(variant: VariantConfig) -> bool:
    """A static int8 variant with no data source of its own: it calibrates on what the door passes."""
    return needs_calibration(variant) and not variant.calibration.npz and not variant.calibration.datamodule


def check_calibration(config: ExportConfig, calibration_samples: Optional[Sequence[Any]]) -> None:
    """Refuse, before exporting, a static int8 variant with nowhere to read calibration data from."""
    for index, variant in enumerate(config.variants):
        if not needs_calibration(variant):
            continue
        where = f"export.variants[{index}].calibration"
        source = variant.calibration
        if calibration_samples or source.datamodule or source.generated:
            continue
        if source.npz:
            if not Path(source.npz).expanduser().is_file():
                raise ConfigError(
                    f"{where}.npz={source.npz!r} is not a file",
                    fix="give the path of an .npz of arrays named like the graph inputs",
                )
            continue
        raise ConfigError(
            f"variant {variant.name!r} is static int8 but has no calibration data",
            fix=f"set {where}.npz (arrays named like the inputs) or {where}.datamodule (a Hydra _target_), "
            f"pass calibration_samples, or set {where}.generated=true to calibrate on random inputs",
        )


def calibration_feeds(
    variant: VariantConfig,
    model: Any,
    example: ModelInputs,
    config: ExportConfig,
    calibration_samples: Optional[Sequence[Any]] = None,
) -> list[Feed]:
    """The feeds static int8 calibrates ``variant`` on, from the first source that has data."""
    source = variant.calibration
    if calibration_samples:
        return feeds(model, list(calibration_samples)[: source.batches], example, config)
    if source.npz:
        key = f"export.variants[name={variant.name}].calibration.npz"
        return npz_batches(source.npz, example.names, source.batches, key)
    if source.datamodule:
        return feeds(model, datamodule_batches(source, model), example, config)
    if source.generated:
        return generated_feeds(example, config, source.batches)
    raise ConfigError(  # check_calibration refused this before exporting; here for direct callers
        f"variant {variant.name!r} is static int8 but has no calibration data",
        fix="set calibration.npz or calibration.datamodule, or pass calibration_samples",
    )


def datamodule_batches(source: CalibrationConfig, module: Any) -> list[Any]:
    """The input parts of the first ``source.batches`` batches of the datamodule ``source`` builds."""
    from hydra.utils import instantiate

    try:
        datamodule = instantiate(source.datamodule, _convert_="all")
    except Exception as error:
        raise ConfigError(
            f"calibration.datamodule cannot be built: {error}",
            fix="give a Hydra config whose _target_ is a LightningDataModule class and its arguments",
        ) from None
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if hasattr(datamodule, "setup"):
        datamodule.setup("test" if source.split == "test" else "fit")
    loader = getattr(datamodule, f"{source.split}_dataloader", None)
    if loader is None:
        raise ConfigError(
            f"calibration.datamodule {type(datamodule).__name__} has no {source.split}_dataloader()",
            fix="set calibration.split to a split the datamodule has (train, val or test)",
        )
    return first_batches(loader(), source.batches, module)


def generated_feeds(example: ModelInputs, config: ExportConfig, count: int) -> list[Feed]:
    """Seeded inputs at the example's shapes, as validation generates them (not representative)."""
    from onnxport.inputs import generate_like

    return [generate_like(example, {}, config.validation.seed + 1000 + i).feed() for i in range(count)]
