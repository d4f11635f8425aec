"""Example inputs: from whatever the caller gave to one normalised, named structure.

``prepare_inputs`` turns a tensor, a tuple/list, a dict or nothing at all into
:class:`ModelInputs`, bound to ``forward``'s signature so both exporters see the
same arguments in the same order. ``flatten_outputs`` names the outputs and
``resolve_dynamic_axes`` decides which axes stay symbolic.

Naming rule, for inputs and outputs alike: one name per tensor leaf, the path of
keys and indices to it joined with ``.`` (``extra.probs``, ``pair.0``). A bare
tensor output is ``output``; the items of a top-level tuple are ``output_0``,
``output_1``, ...; a tensor argument is named after its ``forward`` parameter;
a dict given for a ``forward`` that takes one dict is named by its keys.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onnxport.config import ExportConfig, InputSpec
from onnxport.errors import ConfigError, InputError

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

BATCH_AXIS_NAME = "batch"
_INTEGER_DEFAULT_RANGE = (0, 10)


@dataclass
class ModelInputs:
    """Example inputs bound to ``forward``: call them, feed them to ONNX Runtime, resize them."""

    args: tuple
    kwargs: dict
    names: list[str]
    """ONNX graph input names, one per tensor leaf of ``(args, kwargs)`` in pytree order."""
    specs: dict[str, InputSpec] = field(default_factory=dict)
    """Value ranges per input name (from the config), used to generate more inputs."""

    def tensors(self) -> list[torch.Tensor]:
        """The tensor leaves, in the order of :attr:`names`."""
        import torch
        from torch.utils._pytree import tree_flatten

        return [leaf for leaf in tree_flatten((self.args, self.kwargs))[0] if isinstance(leaf, torch.Tensor)]

    def feed(self) -> dict[str, np.ndarray]:
        """An ONNX Runtime feed: graph input name to numpy array."""
        tensors = self.tensors()
        return {name: t.detach().cpu().numpy() for name, t in zip(self.names, tensors, strict=True)}

    def call(self, model: Any) -> Any:
        """Run ``model(*args, **kwargs)`` without autograd."""
        import torch

        with torch.no_grad():
            return _callable(model)(*self.args, **self.kwargs)

    def with_tensors(self, new_leaves: Sequence[torch.Tensor]) -> ModelInputs:
        """The same structure and names with the tensor leaves replaced, in order."""
        import torch
        from torch.utils._pytree import tree_flatten, tree_unflatten

        leaves, spec = tree_flatten((self.args, self.kwargs))
        replacements = iter(new_leaves)
        leaves = [next(replacements) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = tree_unflatten(leaves, spec)
        return dataclasses.replace(self, args=tuple(args), kwargs=dict(kwargs))

    def shapes(self) -> dict[str, list[int]]:
        """Input name to shape, for reports and error messages."""
        return {name: list(t.shape) for name, t in zip(self.names, self.tensors(), strict=True)}


# -- preparing ----------------------------------------------------------------------------


def choose_example_inputs(
    model: Any,
    given: Any,
    config: ExportConfig,
    *,
    fallback: Callable[[], Any] | None = None,
    fallback_source: str = "fallback",
) -> tuple[Any, str]:
    """The example inputs to export with, and where they came from: the one order of every door.

    1. ``given``, what the caller passed (the API's ``example_inputs``);
    2. ``config.inputs`` (``export.inputs``): an explicit setting beats an attribute of the model;
    3. the model's ``example_input_array`` (a LightningModule's, or any module's attribute);
    4. ``fallback()``, what the door can offer last (the callback: the first train batch).

    Returns ``(inputs, source)``; ``source`` is ``"given"``, ``"export.inputs"``,
    ``"example_input_array"`` or ``fallback_source``.

    >>> import torch
    >>> from onnxport.config import ExportConfig
    >>> net = torch.nn.Linear(4, 2)
    >>> net.example_input_array = torch.zeros(2, 4)
    >>> config = ExportConfig.coerce(None, inputs=[{"name": "input", "shape": [3, 4]}])
    >>> inputs, source = choose_example_inputs(net, None, config)
    >>> source, tuple(inputs["input"].shape)
    ('export.inputs', (3, 4))
    """
    if given is not None:
        return given, "given"
    if config.inputs:
        return generate_inputs(config.inputs, seed=config.validation.seed), "export.inputs"
    attribute = getattr(model, "example_input_array", None)
    if attribute is not None:
        return attribute, "example_input_array"
    if fallback is not None:
        return fallback(), fallback_source
    raise InputError(
        f"no example inputs for {type(model).__name__}: none were given, the config has no inputs "
        "spec and the model has no example_input_array",
        fix="pass example_inputs, add export.inputs (e.g. [{name: x, shape: [2, 4], dtype: float32}]) "
        "or set model.example_input_array",
    )


def prepare_inputs(model: Any, example_inputs: Any, config: ExportConfig) -> ModelInputs:
    """Normalise ``example_inputs`` for ``model`` (see the module docstring for the naming rule).

    ``None`` falls back as :func:`choose_example_inputs` orders it (``export.inputs``, then
    ``example_input_array``). Floating inputs move to the model's device and float dtype;
    integer and bool inputs keep their dtype.
    """
    specs = {spec.name: spec for spec in config.inputs}
    if isinstance(example_inputs, ModelInputs):
        return example_inputs
    example_inputs, _ = choose_example_inputs(model, example_inputs, config)

    signature = forward_signature(model)
    args, kwargs = _split(example_inputs, signature)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise InputError(
            f"example inputs {_describe(example_inputs)} do not fit forward{signature}: {error}",
            fix="pass one value per forward parameter (a tuple for several, a dict keyed by name)",
        ) from None
    args, kwargs = _normalise(bound, model)

    device, dtype = model_device_and_dtype(model)
    args, kwargs = _move((args, kwargs), device, dtype)

    leaves, names = _named_leaves(bound.signature, args, kwargs)
    if not leaves:
        raise InputError(
            f"example inputs {_describe(example_inputs)} contain no tensor",
            fix="pass at least one torch.Tensor as an example input",
        )
    names = chosen_names("input_names", config.input_names, names, "the example inputs have")
    return ModelInputs(args=args, kwargs=kwargs, names=names, specs=specs)


def chosen_names(option: str, given: list[str] | None, derived: list[str], counted: str) -> list[str]:
    """``given`` names (from ``export.<option>``) if set, one per tensor, else the ``derived`` ones."""
    if given is None:
        return derived
    if len(given) != len(derived):
        raise ConfigError(
            f"export.{option}={given} has {len(given)} names but {counted} {len(derived)} tensors "
            f"({', '.join(derived)})",
            fix=f"give exactly one name per tensor, or leave {option} unset",
        )
    return list(given)


def forward_signature(model: Any) -> inspect.Signature:
    """The signature of what ``model(...)`` calls (``forward`` for modules)."""
    target = _callable(model)
    forward = getattr(target, "forward", target)
    for eval_str in (True, False):  # resolved annotations read better in error messages
        try:
            return inspect.signature(forward, eval_str=eval_str)
        except (TypeError, ValueError):
            break
        except Exception:  # an annotation that does not resolve at runtime
            continue
    schema = getattr(forward, "schema", None)
    if schema is not None:  # traced ScriptModules have a schema but no Python signature
        return inspect.Signature(
            [
                inspect.Parameter(argument.name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                for argument in schema.arguments[1:]  # skip self
            ]
        )
    return inspect.Signature(
        [
            inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    )


def model_device_and_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """Device of the first parameter or buffer and the first floating dtype (CPU/float32 if none)."""
    import torch

    tensors = _state_tensors(model)
    device = tensors[0].device if tensors else torch.device("cpu")
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    return device, floating[0] if floating else torch.float32


def _state_tensors(model: Any) -> list[torch.Tensor]:
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return list(model.state_dict.values()) + list(model.constants.values())
    if isinstance(model, torch.nn.Module):
        return [*model.parameters(), *model.buffers()]
    return []


def _callable(model: Any) -> Any:
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    return model


def _split(example: Any, signature: inspect.Signature) -> tuple[tuple, dict]:
    """Decide what the caller's example value means as ``(args, kwargs)``.

    A dict is keyword arguments when every key names a parameter (or ``forward``
    takes ``**kwargs``), else the single argument of a ``forward`` that takes one
    dict; torch.onnx's ``_decide_input_format`` draws the same line.
    """
    import torch

    params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    takes_var_keyword = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, Mapping):
        names = {p.name for p in params}
        if takes_var_keyword or (example and all(key in names for key in example)):
            return (), dict(example)
        return (dict(example),), {}
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    return (example,), {}


def _normalise(bound: inspect.BoundArguments, model: Any) -> tuple[tuple, dict]:
    """Positional-only and ``*args`` stay positional; the rest become keywords in signature order.

    Keywords avoid torch.onnx reading a trailing dict argument as keyword
    arguments, and signature order keeps the graph inputs in ``forward``'s order.
    An ExportedProgram only accepts the positional/keyword split it was exported with.
    """
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        args_spec, kwargs_spec = model.call_spec.in_spec.children()
        values = list(bound.arguments.values())
        keywords = list(kwargs_spec.context or [])
        return tuple(values[: args_spec.num_children]), {k: bound.arguments[k] for k in keywords}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind == inspect.Parameter.POSITIONAL_ONLY:
            args.append(value)
        elif kind == inspect.Parameter.VAR_POSITIONAL:
            args.extend(value)
        elif kind == inspect.Parameter.VAR_KEYWORD:
            kwargs.update(value)
        else:
            kwargs[name] = value
    return tuple(args), kwargs


def _move(tree: Any, device: torch.device, dtype: torch.dtype) -> Any:
    import torch
    from torch.utils._pytree import tree_map

    def move(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        if leaf.is_meta and device.type != "meta":
            raise InputError(
                f"an example input of shape {list(leaf.shape)} is on the meta device: it holds no values",
                fix="pass real tensors (e.g. torch.zeros of that shape) as example inputs",
            )
        target_dtype = dtype if leaf.is_floating_point() else leaf.dtype
        # .to is a no-op (same tensor, no copy) when nothing changes
        return leaf.detach().to(device=device, dtype=target_dtype)

    return tree_map(move, tree)


def _named_leaves(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[list, list[str]]:
    # positional values fill the parameters in order (an ExportedProgram passes them all positionally)
    positional_names = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    pairs: list[tuple[str, Any]] = []
    for index, value in enumerate(args):
        name = positional_names[index] if index < len(positional_names) else f"input_{index}"
        pairs += _leaves_with_paths(value, name)
    for key, value in kwargs.items():
        pairs += _leaves_with_paths(value, key)
    return [leaf for _, leaf in pairs], _unique([name for name, _ in pairs])


def _leaves_with_paths(value: Any, prefix: str, *, unwrap_single_dict: bool = True) -> list[tuple[str, Any]]:
    """Tensor leaves of ``value`` with their dotted paths; a dict argument is named by its keys."""
    import torch

    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, Mapping):
        out = []
        for key, item in value.items():
            path = str(key) if unwrap_single_dict else f"{prefix}.{key}"
            out += _leaves_with_paths(item, path, unwrap_single_dict=False)
        return out
    if isinstance(value, (tuple, list)):
        out = []
        for index, item in enumerate(value):
            out += _leaves_with_paths(item, f"{prefix}.{index}", unwrap_single_dict=False)
        return out
    return []


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


def _describe(value: Any) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value)
        return f"({inner},)" if isinstance(value, tuple) and len(value) == 1 else f"({inner})"
    return type(value).__name__


# -- outputs ------------------------------------------------------------------------------


def flatten_outputs(outputs: Any) -> list[tuple[str, torch.Tensor]]:
    """Name every tensor in ``outputs`` (tensor, tuple, dict, dataclass, nesting of them).

    The order is the order the exporters flatten outputs in; ``None`` entries are
    skipped, as the exporters drop them.
    """
    import torch

    if isinstance(outputs, torch.Tensor):
        return [("output", outputs)]
    if isinstance(outputs, (tuple, list)) and not _fields(outputs):
        pairs: list[tuple[str, torch.Tensor]] = []
        for index, item in enumerate(outputs):
            pairs += _output_leaves(item, f"output_{index}")
        return _dedupe(pairs)
    return _dedupe(_output_leaves(outputs, ""))


def _output_leaves(value: Any, prefix: str) -> list[tuple[str, Any]]:
    import torch

    def join(key: Any) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [(prefix or "output", value)]
    fields = _fields(value)
    if fields is not None:
        items = fields.items()
    elif isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (tuple, list)):
        items = enumerate(value)
    else:
        return []  # python scalars and other constants are not graph outputs
    out = []
    for key, item in items:
        out += _output_leaves(item, join(key))
    return out


def _fields(value: Any) -> dict[str, Any] | None:
    """Named fields of a dataclass or namedtuple output (Hugging Face ``ModelOutput`` is a dict)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and not isinstance(value, Mapping):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return dict(zip(value._fields, value, strict=True))
    return None


def _dedupe(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return list(zip(_unique([name for name, _ in pairs]), [tensor for _, tensor in pairs], strict=True))


# -- dynamic axes -------------------------------------------------------------------------


def resolve_dynamic_axes(
    inputs: ModelInputs,
    output_names: list[str],
    config: ExportConfig,
    outputs: Sequence[torch.Tensor] | None = None,
    *,
    model: Any = None,
) -> dict[str, dict[int, str]]:
    """Dynamic axes of inputs and outputs in the torch.onnx form ``{name: {axis: axis_name}}``.

    ``dynamic_batch`` makes axis 0 ``batch`` where it behaves as one. Given the ``model``, that is
    tried: the model runs once more with the batch grown by one (:func:`probed_axes`), and an input
    whose axis 0 cannot change, or differs from the batch size, stays static; outputs are dynamic
    where they followed. A transformers model's text inputs also get a dynamic ``sequence`` axis 1
    (:mod:`onnxport.conventions`). Without the model, every input's axis 0 is ``batch``, and so is
    each output's whose axis 0 has the batch size (when ``outputs`` is given) or all of them.
    ``config.dynamic_axes`` replaces the entry of each name it lists; ``{}`` makes that name static.
    """
    tensors = inputs.tensors()
    axes: dict[str, dict[int, str]] = {}
    if model is not None:
        axes = probed_axes(model, inputs, config, output_names, outputs)
    elif config.dynamic_batch:
        batch_sizes = {t.shape[0] for t in tensors if t.dim() >= 1}
        for name, tensor in zip(inputs.names, tensors, strict=True):
            if tensor.dim() >= 1:
                axes[name] = {0: BATCH_AXIS_NAME}
        for index, name in enumerate(output_names):
            # an output follows the batch when its first axis has the batch size
            if outputs is None or (outputs[index].dim() >= 1 and outputs[index].shape[0] in batch_sizes):
                axes[name] = {0: BATCH_AXIS_NAME}

    ranks = {name: t.dim() for name, t in zip(inputs.names, tensors, strict=True)}
    if outputs is not None:
        ranks.update({name: t.dim() for name, t in zip(output_names, outputs, strict=True)})
    known = [*inputs.names, *output_names]
    for name, spec in config.dynamic_axes.items():
        if name not in known:
            raise ConfigError(
                f"export.dynamic_axes names {name!r}, which is neither an input nor an output; "
                f"inputs: {', '.join(inputs.names)}; outputs: {', '.join(output_names)}",
                fix="key dynamic_axes by a graph input or output name",
            )
        axes[name] = _axis_map(name, spec, ranks.get(name))
    return {name: mapping for name, mapping in axes.items() if mapping}


def probed_axes(
    model: Any,
    inputs: ModelInputs,
    config: ExportConfig,
    output_names: list[str],
    outputs: Sequence[torch.Tensor] | None,
) -> dict[str, dict[int, str]]:
    """The batch (and sequence) axes the model accepts at another size, tried with one eager call.

    The candidates: axis 0 of the inputs with the most common first size (with ``dynamic_batch``),
    axis 1 of a transformers model's text inputs; not the inputs ``export.dynamic_axes`` lists (the
    user's word wins). They are grown together (the batch by one, a sequence shrunk by one) and the
    model is run: outputs whose axes moved with them get the same names. If the call fails, the
    batch alone is tried; what still fails stays static, said in one info line.
    """
    import torch

    from onnxport import conventions

    tensors = inputs.tensors()
    names = inputs.names
    wanted: dict[str, dict[int, str]] = {}
    static: list[str] = []  # what the info line names
    if config.dynamic_batch:
        firsts = [int(t.shape[0]) for t in tensors if t.dim() >= 1]
        batch = max(firsts, key=firsts.count) if firsts else None
        for name, tensor in zip(names, tensors, strict=True):
            if tensor.dim() >= 1 and tensor.shape[0] == batch:
                wanted[name] = {0: BATCH_AXIS_NAME}
            elif tensor.dim() >= 1:
                static.append(f"axis 0 of {name} (size {tensor.shape[0]}, the batch is {batch})")
    ranks = [t.dim() for t in tensors]
    for name, axis_name in conventions.sequence_axes(model, names, ranks).items():
        wanted.setdefault(name, {})[1] = axis_name
    wanted = {name: axes for name, axes in wanted.items() if name not in config.dynamic_axes}
    if not wanted or isinstance(model, torch.export.ExportedProgram):  # a program's shapes are fixed
        return _by_coincidence(wanted, output_names, outputs, tensors)

    found, grown, error = _try_sizes(model, inputs, wanted, config.validation.seed)
    if error is not None and any(axis for axes in wanted.values() for axis in axes):
        batch_only = {name: {0: axes[0]} for name, axes in wanted.items() if 0 in axes}
        found, grown, second = _try_sizes(model, inputs, batch_only, config.validation.seed)
        dropped = sorted(name for name, axes in wanted.items() if set(axes) - {0})
        static.append(f"the sequence axis of {', '.join(dropped)} (the model raised {_short(error)})")
        wanted, error = batch_only, second
    if error is not None:
        tried = sorted({size for (_, axis_name), size in grown.items() if axis_name == BATCH_AXIS_NAME})
        static.append(
            f"axis 0 of {', '.join(wanted)} ({type(model).__name__} raised at {tried[0] if tried else '?'}: "
            f"{_short(error)})"
        )
        wanted = {}
    if static:
        logger.info("kept static: %s", "; ".join(static))
    axes = dict(wanted)
    if found is not None and outputs is not None and len(found) == len(outputs):
        for name, before, after in zip(output_names, outputs, found, strict=True):
            moved = _moved_axes(before, after, grown)
            if moved:
                axes[name] = moved
    return axes


def _try_sizes(
    model: Any, inputs: ModelInputs, wanted: dict[str, dict[int, str]], seed: int
) -> tuple[list[torch.Tensor] | None, dict[tuple[int, str], int], BaseException | None]:
    """Run ``model`` with the ``wanted`` axes grown.

    Returns the flat outputs (``None`` if it raised), ``{(old size, axis name): new size}`` and the error.
    """
    import torch

    if not wanted:
        return None, {}, None
    tensors = dict(zip(inputs.names, inputs.tensors(), strict=True))
    grown: dict[tuple[int, str], int] = {}
    sizes: dict[str, dict[int, int]] = {}
    for name, axes in wanted.items():
        for axis, axis_name in axes.items():
            old = int(tensors[name].shape[axis])
            new = old + 1 if axis == 0 or old == 1 else old - 1  # a shorter text fits any position table
            grown[(old, axis_name)] = new
            sizes.setdefault(name, {})[axis] = new
    if all(set(axes) == {0} for axes in sizes.values()):
        # only the batch grows: repeat real rows, so no generated value can be what the model refuses
        probe = inputs.with_tensors(
            [
                t.index_select(0, torch.arange(sizes[n][0], device=t.device) % t.shape[0])
                if n in sizes
                else t
                for n, t in tensors.items()
            ]
        )
    else:
        from onnxport.conventions import vocab_size

        probe = generate_like(inputs, sizes, seed, vocab_size=vocab_size(model))
    try:
        found = [tensor for _, tensor in flatten_outputs(probe.call(model))]
    except Exception as error:  # the model does not take these sizes
        return None, grown, error
    return found, grown, None


def _moved_axes(
    before: torch.Tensor, after: torch.Tensor, grown: dict[tuple[int, str], int]
) -> dict[int, str]:
    """The axes of an output that changed as an input axis did, named as that axis."""
    if before.dim() != after.dim():
        return {}
    moved = {}
    for axis, (old, new) in enumerate(zip(before.shape, after.shape, strict=True)):
        for (was, axis_name), now in grown.items():
            if old != new and (old, new) == (was, now) and axis_name not in moved.values():
                moved[axis] = axis_name
                break
    return moved


def _by_coincidence(
    wanted: dict[str, dict[int, str]],
    output_names: list[str],
    outputs: Sequence[torch.Tensor] | None,
    tensors: list[torch.Tensor],
) -> dict[str, dict[int, str]]:
    """Without a probe, outputs whose axis 0 has the batch size follow the batch."""
    axes = dict(wanted)
    firsts = {int(t.shape[0]) for t in tensors if t.dim() >= 1}
    if any(0 in found for found in wanted.values()) and outputs is not None:
        for name, output in zip(output_names, outputs, strict=True):
            if output.dim() >= 1 and output.shape[0] in firsts:
                axes[name] = {0: BATCH_AXIS_NAME}
    return axes


def _short(error: BaseException) -> str:
    from onnxport.errors import one_line

    return f"{type(error).__name__}: {one_line(error, limit=160)}"


def _axis_map(name: str, spec: Any, rank: int | None) -> dict[int, str]:
    """``{axis: name}`` from the torch.onnx forms ``{0: "batch"}`` or ``[0, 1]`` (axis keys may be "0")."""
    if spec is None:
        return {}
    pairs = spec.items() if isinstance(spec, Mapping) else ((axis, None) for axis in spec)
    mapping: dict[int, str] = {}
    for axis, axis_name in pairs:
        try:
            index = int(axis)
        except (TypeError, ValueError):
            raise ConfigError(
                f"export.dynamic_axes.{name} has axis {axis!r}, which is not an integer",
                fix='write axes as integers, e.g. {"x": {0: "batch"}}',
            ) from None
        if rank is not None and not -rank <= index < rank:
            raise ConfigError(
                f"export.dynamic_axes.{name} has axis {index} but {name} has {rank} dimensions",
                fix=f"use an axis between 0 and {rank - 1}",
            )
        if rank is not None and index < 0:
            index += rank
        mapping[index] = str(axis_name) if axis_name is not None else f"{name}_dim_{index}"
    return mapping


# -- generated inputs ---------------------------------------------------------------------
#
# Validation (and the batch probe) needs inputs beyond the example: the same structure at other
# sizes. Their values follow what the example shows, read per row along its last axis, because
# outputs on values no tokenizer produces test nothing: a random 0/1 attention mask leaves whole
# rows of a causal model attending to no token, where eager PyTorch and the exported graph
# disagree on what an empty softmax gives (issue 14: CLIP's text model, max differences 2.6-4.0).


@dataclass(frozen=True)
class ValuePattern:
    """How the values of one input are drawn, at any shape; :func:`pattern_of` reads one from an example."""

    kind: str
    """``normal`` (standard normal), ``uniform`` in ``[low, high)``, ``constant`` (every value ``low``),
    ``right_padded`` / ``left_padded`` (per row a prefix / suffix run of ones, at least ``low`` long,
    the first row padded least), ``segments`` (per row nondecreasing runs of ``low`` .. ``high - 1``,
    as token type ids), ``positions`` (``low + arange`` along the last axis) or ``binary`` (random 0/1;
    ``low`` ones per row at least)."""
    low: float = 0
    high: float = 0


def pattern_of(name: str, tensor: torch.Tensor, vocab_size: int | None = None) -> ValuePattern:
    """The :class:`ValuePattern` that draws values like ``tensor``'s (the example input ``name``).

    Integers stay in the example's observed range, token ids (``*input_ids``) below ``vocab_size``;
    0/1 masks keep right or left padding (per row a run of ones, never a row of zeros); type ids keep
    their segments (all zeros stays zeros); position ids stay ``arange``; floats are standard normal.

    >>> import torch
    >>> pattern_of("attention_mask", torch.tensor([[1, 1, 1], [1, 1, 0]]))
    ValuePattern(kind='right_padded', low=1, high=0)
    >>> pattern_of("input_ids", torch.tensor([[5, 9], [7, 99]]), vocab_size=50)
    ValuePattern(kind='uniform', low=5, high=50)
    """
    import torch

    from onnxport.conventions import is_token_ids

    leaf = name.rsplit(".", 1)[-1].lower()
    masky, typey = "mask" in leaf, "type_ids" in leaf or "segment" in leaf
    values = tensor.detach()
    if values.numel() == 0:
        return (
            ValuePattern("normal")
            if values.is_floating_point()
            else ValuePattern("uniform", *_INTEGER_DEFAULT_RANGE)
        )
    binary = bool(((values == 0) | (values == 1)).all())
    if values.is_floating_point() or values.is_complex():
        return (
            _mask_pattern(values, masky=True) if masky and binary and values.dim() else ValuePattern("normal")
        )
    low, high = int(values.min()), int(values.max())
    if low == high:  # all zeros stays zeros; a full mask becomes padded rows of varied lengths
        return (
            ValuePattern("right_padded", 1)
            if masky and low == 1 and values.dim()
            else ValuePattern("constant", low)
        )
    if values.dim() == 0:
        return ValuePattern("uniform", low, high + 1)
    rows = values.reshape(-1, values.shape[-1]).long()
    steps = rows.diff(dim=1)
    marked = masky or values.dtype == torch.bool or (values.dim() >= 2 and bool((steps <= 0).all()))
    if binary and not typey and marked:
        return _mask_pattern(values, masky=masky)
    if values.dim() >= 2 and rows.shape[1] > 1:
        if bool((steps == 1).all()):
            return ValuePattern("positions", int(rows[:, 0].min()))
        if bool((steps >= 0).all()) and (typey or binary):
            return ValuePattern("segments", low, high + 1)
    if vocab_size is not None and is_token_ids(name) and low < vocab_size:
        high = min(high, vocab_size - 1)
    return ValuePattern("uniform", low, high + 1)


def _mask_pattern(values: torch.Tensor, *, masky: bool) -> ValuePattern:
    """Right padding (rows of ones then zeros), left padding (zeros then ones) or random 0/1.

    A row of ones may be empty only where the example has one and no full row: then the ones mark
    padding (PyTorch's ``key_padding_mask``) and it is a full row that would leave nothing to attend.
    """
    rows = (values.reshape(-1, values.shape[-1]) != 0).long()
    counts = rows.sum(dim=1)
    full = rows.shape[1]
    inverted = bool((counts == 0).any()) and not bool((counts == full).any())
    least = 0 if inverted else 1
    steps = rows.diff(dim=1)
    if bool((steps <= 0).all()):
        return ValuePattern("right_padded", least)
    if bool((steps >= 0).all()):
        return ValuePattern("left_padded", least)
    return ValuePattern("binary", 1 if masky else 0)


def draw(
    pattern: ValuePattern, shape: Sequence[int], dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """A seeded tensor of ``shape`` and ``dtype`` whose values follow ``pattern``."""
    import torch

    shape = list(shape)
    kind = pattern.kind if shape or pattern.kind in ("normal", "uniform", "constant") else "uniform"
    length = shape[-1] if shape else 1
    rows = max(1, int(torch.Size(shape[:-1]).numel())) if shape else 1
    if kind == "normal":
        tensor = torch.randn(shape, generator=generator)
    elif kind == "constant":
        tensor = torch.full(shape, pattern.low, dtype=torch.float64)
    elif kind == "uniform" and (dtype.is_floating_point or dtype.is_complex):
        tensor = (
            torch.rand(shape, generator=generator, dtype=torch.float64) * (pattern.high - pattern.low)
            + pattern.low
        )
    elif kind == "uniform":
        tensor = torch.randint(int(pattern.low), int(pattern.high), shape, generator=generator)
    elif kind in ("right_padded", "left_padded"):
        least = int(pattern.low)
        most = length if least else length - 1
        counts = torch.randint(least, max(least, most) + 1, (rows,), generator=generator)
        counts[0] = most if least else least  # one row as long as the batch, as a tokenizer pads
        ones = counts.clamp(0, length)[:, None]
        position = torch.arange(length)[None, :]
        tensor = position < ones if kind == "right_padded" else position >= length - ones
    elif kind == "segments":
        cuts = torch.randint(
            1, length + 1, (rows, max(0, int(pattern.high - pattern.low) - 1)), generator=generator
        )
        position = torch.arange(length)[None, :, None]
        tensor = pattern.low + (position >= cuts.sort(dim=1).values[:, None, :]).sum(dim=-1)
    elif kind == "positions":
        tensor = (pattern.low + torch.arange(length)).expand(rows, length)
    else:  # binary
        tensor = torch.randint(0, 2, (rows, length), generator=generator)
        if pattern.low:  # never a row of zeros in a mask
            tensor[tensor.sum(dim=1) == 0, 0] = 1
    tensor = tensor.reshape(shape)
    return tensor != 0 if dtype == torch.bool else tensor.to(dtype)


def generate_like(
    example: ModelInputs,
    sizes: Mapping[str, Mapping[int, int]],
    seed: int,
    *,
    vocab_size: int | None = None,
) -> ModelInputs:
    """Seeded inputs like ``example``'s with axes resized (``{name: {axis: size}}``).

    An ``export.inputs`` range pins an input's values; the others follow :func:`pattern_of`.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for name, tensor in zip(example.names, example.tensors(), strict=True):
        shape = list(tensor.shape)
        for axis, size in sizes.get(name, {}).items():
            shape[int(axis)] = size
        spec = example.specs.get(name)
        pattern = _pinned(spec, tensor.dtype) if spec is not None else None
        pattern = pattern or pattern_of(name, tensor, vocab_size)
        tensors.append(draw(pattern, shape, tensor.dtype, generator).to(tensor.device))
    return example.with_tensors(tensors)


def generate_inputs(
    specs: list[InputSpec], seed: int, sizes: dict[str, dict[int, int]] | None = None
) -> dict[str, torch.Tensor]:
    """Seeded tensors from ``specs`` (``export.inputs``); ``sizes`` overrides axes (``{name: {axis: size}}``).

    A range (``low``/``high``) draws uniformly in ``[low, high)``. Without one, names decide as a
    tokenizer would fill them: ``*mask*`` integers and bools are right-padded masks, ``*type_ids``
    zeros, ``position_ids`` ``arange``; other integers are in ``[0, 10)``, bools random, floats normal.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for spec in specs:
        shape = list(spec.shape)
        for axis, size in (sizes or {}).get(spec.name, {}).items():
            shape[int(axis)] = size
        dtype = getattr(torch, spec.dtype)
        pattern = _pinned(spec, dtype) or _named_pattern(spec.name, dtype, bool(shape))
        tensors[spec.name] = draw(pattern, shape, dtype, generator)
    return tensors


def _pinned(spec: InputSpec, dtype: torch.dtype) -> ValuePattern | None:
    """The uniform range ``spec`` pins, if it sets one."""
    if spec.low is None and spec.high is None:
        return None
    if dtype.is_floating_point:
        low = 0.0 if spec.low is None else spec.low
        return ValuePattern("uniform", low, low + 1.0 if spec.high is None else spec.high)
    low = int(_INTEGER_DEFAULT_RANGE[0] if spec.low is None else spec.low)
    high = int(_INTEGER_DEFAULT_RANGE[1] if spec.high is None else spec.high)
    if high <= low:
        raise ConfigError(
            f"export.inputs[{spec.name}] has low={low} >= high={high}",
            fix="set high above low (high is exclusive for integer inputs)",
        )
    return ValuePattern("uniform", low, high)


def _named_pattern(name: str, dtype: torch.dtype, has_axes: bool) -> ValuePattern:
    import torch

    leaf = name.rsplit(".", 1)[-1].lower()
    if dtype.is_floating_point:
        return ValuePattern("normal")
    if "mask" in leaf and has_axes:
        return ValuePattern("right_padded", 1)
    if "type_ids" in leaf:
        return ValuePattern("constant", 0)
    if leaf == "position_ids" and has_axes:
        return ValuePattern("positions", 0)
    return ValuePattern("binary") if dtype == torch.bool else ValuePattern("uniform", *_INTEGER_DEFAULT_RANGE)
