"""unwrap() and strip_wrapper_prefixes(): every training wrapper, alone and nested, real torch objects."""

from __future__ import annotations

import socket
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from conftest import TinyMLP, run_onnx
from onnxport.errors import InputError
from onnxport.unwrap import strip_wrapper_prefixes, unwrap


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def process_group():
    """A real one-process gloo group, so DistributedDataParallel can be built on CPU."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{_free_port()}")
    yield
    dist.destroy_process_group()


def _fabric(package: str) -> Callable[[nn.Module], nn.Module]:
    def wrap(module: nn.Module) -> nn.Module:
        fabric_cls = __import__(package, fromlist=["Fabric"]).Fabric
        return fabric_cls(accelerator="cpu", devices=1).setup_module(module)

    return wrap


WRAPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "dp": nn.DataParallel,
    "ddp": nn.parallel.DistributedDataParallel,
    # backend="eager": nothing is compiled until called, and unwrap never calls it.
    "compile": lambda module: torch.compile(module, backend="eager"),
    "averaged": AveragedModel,
    "fabric": _fabric("lightning.fabric"),
    "lightning_fabric": _fabric("lightning_fabric"),
}

# Each chain is applied innermost first: ("averaged", "compile", "dp") is DP(compile(AveragedModel(m))).
CHAINS = [
    *[(name,) for name in WRAPPERS],
    ("averaged", "compile", "dp"),
    ("averaged", "ddp"),
    ("compile", "fabric"),
    ("dp", "dp"),
    ("averaged", "compile", "dp", "fabric"),
]


def wrap(chain: tuple[str, ...]) -> tuple[nn.Module, nn.Module]:
    """Return (wrapped model, the module unwrap must find).

    AveragedModel deep-copies what it wraps; its averaged copy is the module to export.
    """
    torch.manual_seed(0)
    bare = TinyMLP().eval()
    wrapped, inner = bare, bare
    for name in chain:
        wrapped = WRAPPERS[name](wrapped)
        if name == "averaged":
            inner = wrapped.module
    return wrapped, inner


def chain_id(chain: tuple[str, ...]) -> str:
    return "(".join(reversed(chain)) + ")" * (len(chain) - 1)


@pytest.fixture(params=CHAINS, ids=chain_id)
def wrapped(request) -> tuple[nn.Module, nn.Module]:
    if "ddp" in request.param:
        request.getfixturevalue("process_group")
    return wrap(request.param)


def test_unwrap_returns_the_wrapped_module_itself_not_a_copy(wrapped):
    model, inner = wrapped
    assert model is not inner
    assert unwrap(model) is inner
    assert type(unwrap(model)) is TinyMLP


def test_state_dict_of_any_wrapper_loads_into_the_bare_model(wrapped):
    model, inner = wrapped
    stripped = strip_wrapper_prefixes(model.state_dict())
    bare = TinyMLP()
    bare.load_state_dict(stripped, strict=True)
    for key, value in inner.state_dict().items():
        assert torch.equal(bare.state_dict()[key], value), key


def test_wrapped_state_dicts_really_carry_prefixes():
    # Guards the test above: without prefixes it would prove nothing.
    model, _ = wrap(("averaged", "compile", "dp"))
    assert "module._orig_mod.module.fc1.weight" in model.state_dict()
    assert "module._orig_mod.n_averaged" in model.state_dict()


def test_bare_module_script_module_and_exported_program_pass_through_unchanged(mlp, mlp_input):
    scripted = torch.jit.script(mlp)
    program = torch.export.export(mlp, (mlp_input,))
    assert unwrap(mlp) is mlp
    assert unwrap(scripted) is scripted
    assert unwrap(program) is program


@pytest.mark.parametrize(
    ("value", "type_name"),
    [("model.ckpt", "str"), ({"fc.weight": torch.zeros(1)}, "dict"), (None, "NoneType")],
)
def test_non_module_is_an_input_error_naming_its_type(value, type_name):
    with pytest.raises(InputError, match=rf"got {type_name}\b") as caught:
        unwrap(value)
    assert caught.value.fix


def test_wrapper_around_a_non_module_names_the_inner_type():
    averaged = AveragedModel(nn.Linear(2, 2))
    object.__setattr__(averaged, "module", "not a module")  # bypass nn.Module's attribute bookkeeping
    with pytest.raises(InputError, match="got str"):
        unwrap(averaged)


def test_strip_keeps_keys_when_not_every_key_is_prefixed():
    # A bare model may own a submodule literally called "module".
    state = {"module.weight": 1, "head.weight": 2}
    assert strip_wrapper_prefixes(state) == state


def test_strip_removes_nested_prefixes_and_the_averaging_counter():
    state = {
        "_forward_module.module._orig_mod.fc.weight": 1,
        "_forward_module.module._orig_mod.fc.bias": 2,
        "_forward_module.module.n_averaged": 3,
    }
    assert strip_wrapper_prefixes(state) == {"fc.weight": 1, "fc.bias": 2}


def test_strip_keeps_n_averaged_of_a_bare_model():
    state = {"fc.weight": 1, "n_averaged": 2}
    assert strip_wrapper_prefixes(state) == state


def test_strip_returns_a_new_dict_and_leaves_the_input_alone():
    state = {"module.fc.weight": torch.ones(1)}
    stripped = strip_wrapper_prefixes(state)
    assert list(state) == ["module.fc.weight"]
    assert stripped["fc.weight"] is state["module.fc.weight"]  # tensors are not copied


# ---- acceptance: each wrapper, alone and nested, exports under both exporters ----

EXPORT_CHAINS = [
    ("dp",),
    ("ddp",),
    ("compile",),
    ("averaged",),
    ("fabric",),
    ("averaged", "compile", "dp"),
    ("averaged", "ddp"),
    ("compile", "fabric"),
]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("chain", EXPORT_CHAINS, ids=chain_id)
def test_wrapped_model_exports_and_matches_eager_at_two_batch_sizes(chain, exporter, tmp_path, request):
    import onnx

    import onnxport

    if "ddp" in chain:
        request.getfixturevalue("process_group")
    model, inner = wrap(chain)
    torch.manual_seed(1)
    example = torch.randn(2, 4)

    result = onnxport.export(model, example, tmp_path / "model.onnx", exporter=exporter)

    assert result.exporter == exporter
    assert result.validation is not None and result.validation.passed
    initializers = [init.name for init in onnx.load(str(result.path)).graph.initializer]
    assert initializers, "weights should be initializers"
    assert not [name for name in initializers if name.startswith(("module.", "_orig_mod.", "_forward"))]
    for batch in (2, 5):
        x = torch.randn(batch, 4)
        (ort_out,) = run_onnx(result.path, {result.input_names[0]: x.numpy()})
        with torch.no_grad():
            expected = inner(x).numpy()
        np.testing.assert_allclose(ort_out, expected, atol=1e-5, rtol=0)
