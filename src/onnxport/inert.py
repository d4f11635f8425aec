"""Read a pickled torch checkpoint without importing or calling anything the file names.

A Lightning checkpoint pickles much more than weights: hyper-parameters holding Hydra partials
(``functools.partial``, ``hydra._internal.target_policy._DeferredTarget``), whole ``nn.Module``
objects, optimizer and scheduler classes, OmegaConf containers, callback state, dataclasses.
torch's ``weights_only`` unpickler refuses all of them, and full unpickling imports and calls
whatever the file names. :func:`inert_load` does neither. torch reads its own zip (or legacy)
format and resolves the tensor storages as it always does; every global the pickle names is
looked up in torch's ``weights_only`` allowlist (tensor rebuild functions, dtypes,
``OrderedDict``, ...) and anything else becomes a :class:`Placeholder` subclass named after it,
which records the arguments and state the pickle gives it and runs nothing. The weights come out
as real tensors, everything else as inert placeholders.

A global from a module that only an attack names (``os.system``, ``subprocess.Popen``,
``builtins.exec``, ...) is refused outright with :class:`RefusedGlobal`, as torch refuses ``os``
and ``sys``: such a file is hostile rather than merely rich, and the caller should say so.
"""

from __future__ import annotations

import functools
import os
import pickle
import types
import zipfile
from collections.abc import Mapping
from typing import Any, ClassVar

# Modules whose globals have no business in a checkpoint: a pickle naming them means to run code.
BLOCKED_MODULES = frozenset(
    {
        *("os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "pty", "runpy", "importlib"),
        *("code", "codeop", "ctypes", "marshal", "pickle", "_pickle", "multiprocessing", "webbrowser"),
        *("pdb", "bdb", "timeit", "commands", "popen2"),
    }
)
BLOCKED_BUILTINS = frozenset(
    {"eval", "exec", "compile", "__import__", "open", "breakpoint", "input", "exit", "quit", "help"}
)


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global of a blocked module; nothing was imported or called."""

    def __init__(self, name: str) -> None:
        self.name = name
        module = name.rpartition(".")[0]
        where = "" if module == "builtins" else f" whose module {module}"
        super().__init__(f"unsupported GLOBAL {name}{where} is blocked")


class Placeholder:
    """Stands for a class or function the checkpoint pickled; calling it only records the call.

    ``pickled_global`` names what the file asked for. An instance keeps what the pickle handed
    it (``args``, ``kwargs``, ``state``, ``items``) and nothing else happens.
    """

    pickled_global: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "items", [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        return placeholder_class(f"{self.pickled_global}(...)")(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __repr__(self) -> str:
        return f"<{self.pickled_global}: not loaded>"


@functools.lru_cache(maxsize=1024)
def placeholder_class(name: str) -> type[Placeholder]:
    """The placeholder type standing for the global ``name`` (one per name)."""
    return type(name.rpartition(".")[2] or name, (Placeholder,), {"pickled_global": name})


def inert_load(source: str | os.PathLike | Any, *, map_location: Any = "cpu") -> tuple[Any, list[str]]:
    """``torch.load`` ``source`` with every non-tensor global replaced by a placeholder.

    ``source`` is a local path (memory-mapped when it is torch's zip format), an fsspec URL
    (``s3://...``, opened through fsspec as Lightning opens checkpoints) or an open binary file.
    Returns the loaded object and the sorted names of the globals that became placeholders.

    Raises:
        RefusedGlobal: the pickle names a global of a blocked module (nothing ran).
        Anything ``torch.load`` raises for a damaged file.

    >>> import io, torch
    >>> buffer = io.BytesIO()
    >>> torch.save({"w": torch.ones(2), "opt": torch.optim.SGD}, buffer)
    >>> _ = buffer.seek(0)
    >>> loaded, placeholders = inert_load(buffer)
    >>> loaded["w"].tolist(), placeholders
    ([1.0, 1.0], ['torch.optim.sgd.SGD'])
    """
    import torch

    found: set[str] = set()
    options = {"map_location": map_location, "weights_only": False, "pickle_module": _pickle_module(found)}
    if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        # The user asked torch for its own, stricter loader everywhere: use it (it refuses a pickle_module).
        options = {"map_location": map_location, "weights_only": True}
    if isinstance(source, str | os.PathLike) and "://" in os.fspath(source):
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(os.fspath(source))
        with fs.open(path, "rb") as handle:
            loaded = torch.load(handle, **options)
    elif isinstance(source, str | os.PathLike):
        # mmap keeps a large checkpoint's tensors on disk until they are copied into the model.
        loaded = torch.load(source, mmap=zipfile.is_zipfile(source), **options)
    else:
        loaded = torch.load(source, **options)
    return loaded, sorted(found)


def find_placeholders(value: Any, *, limit: int = 5) -> list[str]:
    """``path: global`` for up to ``limit`` placeholders inside dicts, lists and tuples of ``value``."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", value)]
    while stack and len(found) < limit:
        path, item = stack.pop()
        if isinstance(item, Placeholder) or (isinstance(item, type) and issubclass(item, Placeholder)):
            found.append(f"{path or '<top>'}: {item.pickled_global}")
        elif isinstance(item, Mapping):
            stack.extend((f"{path}.{key}" if path else str(key), child) for key, child in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
    return found


def module_state_dict(pickled: Placeholder, prefix: str = "") -> dict[str, Any]:
    """The state_dict of a pickled ``nn.Module`` (``torch.save(model)``) read off its placeholder.

    A module pickles its ``__dict__``: ``_parameters``, ``_buffers`` and ``_modules`` hold the
    tensors and the children, so the weights are there without building the class.
    """
    state = pickled.state
    if not isinstance(state, Mapping) or not isinstance(state.get("_parameters"), Mapping):
        raise ValueError(f"{pickled.pickled_global} was not pickled as an nn.Module")
    tensors: dict[str, Any] = {}
    for name, parameter in state["_parameters"].items():
        if parameter is not None:
            tensors[prefix + name] = parameter
    transient = state.get("_non_persistent_buffers_set") or ()
    for name, buffer in (state.get("_buffers") or {}).items():
        if buffer is not None and name not in transient:
            tensors[prefix + name] = buffer
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Placeholder):
            tensors.update(module_state_dict(child, f"{prefix}{name}."))
    return tensors


def _pickle_module(found: set[str]) -> types.SimpleNamespace:
    """A stand-in for the ``pickle`` module whose Unpickler resolves globals inertly into ``found``.

    It is the pure-Python unpickler, so the opcodes that call or mutate can be checked as torch's
    own weights_only unpickler checks them: REDUCE, NEWOBJ and instantiation only call what
    ``find_class`` handed out; BUILD only sets the state of instances, never of a class (which
    would let a file rewrite, say, ``torch.Tensor`` for the rest of the process); the
    process-wide extension registry (EXT opcodes) is not consulted at all.
    """
    import collections

    import torch
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()
    callable_ids = {id(value) for value in allowed.values()}
    buildable = {torch.Tensor, torch.nn.Parameter, collections.OrderedDict, collections.Counter}

    def check_call(target: Any) -> None:
        placeholder = isinstance(target, Placeholder) or (
            isinstance(target, type) and issubclass(target, Placeholder)
        )
        if not placeholder and id(target) not in callable_ids:
            raise pickle.UnpicklingError(f"refused to call {target!r}: find_class did not provide it")

    class InertUnpickler(pickle._Unpickler):
        dispatch = dict(pickle._Unpickler.dispatch)

        def find_class(self, module: str, name: str) -> Any:
            module, name = _python3_name(module, name)
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if module.partition(".")[0] in BLOCKED_MODULES or (
                module == "builtins" and name in BLOCKED_BUILTINS
            ):
                raise RefusedGlobal(full)
            found.add(full)
            return placeholder_class(full)

        def load_reduce(self) -> None:
            check_call(self.stack[-2])
            super().load_reduce()

        def load_newobj(self) -> None:
            check_call(self.stack[-2])
            super().load_newobj()

        def load_newobj_ex(self) -> None:
            check_call(self.stack[-3])
            super().load_newobj_ex()

        def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
            check_call(klass)
            super()._instantiate(klass, args)

        def load_build(self) -> None:
            target = self.stack[-2]
            if not isinstance(target, Placeholder) and type(target) not in buildable:
                raise pickle.UnpicklingError(f"refused to set the state of {target!r}")
            super().load_build()

        def load_ext(self) -> None:
            raise pickle.UnpicklingError("refused an EXT opcode (copyreg's extension registry)")

        dispatch[pickle.REDUCE[0]] = load_reduce
        dispatch[pickle.NEWOBJ[0]] = load_newobj
        dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
        dispatch[pickle.BUILD[0]] = load_build
        for _opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
            dispatch[_opcode[0]] = load_ext

    def load(file: Any, **kwargs: Any) -> Any:  # the legacy format's header records
        return InertUnpickler(file, **kwargs).load()

    return types.SimpleNamespace(__name__=__name__, Unpickler=InertUnpickler, load=load)


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names, as protocol-2 pickles (torch's default) write them, to Python 3 names."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name
