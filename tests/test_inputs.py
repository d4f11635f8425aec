"""Example inputs: binding to forward, naming, device/dtype moves, output names, dynamic axes."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
import torch
from torch import nn

import onnxport
from conftest import DictOutput, TinyMLP, TokenClassifier, TwoInputs
from onnxport.config import ExportConfig, InputSpec
from onnxport.errors import ConfigError, InputError
from onnxport.inputs import (
    ModelInputs,
    ValuePattern,
    flatten_outputs,
    generate_inputs,
    generate_like,
    pattern_of,
    prepare_inputs,
    resolve_dynamic_axes,
)


class OneDict(nn.Module):
    """forward takes one dict, as many batch-dict models do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.proj(batch["features"]) * batch["mask"]


class AnyKeywords(nn.Module):
    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return inputs["a"] + inputs["b"]


class WithExampleArray(TinyMLP):
    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = torch.ones(3, 4)


def prepare(model, example, **options) -> ModelInputs:
    return prepare_inputs(model, example, ExportConfig.coerce(None, **options))


# -- binding and naming ---------------------------------------------------------------------


def test_a_tensor_is_named_after_the_forward_parameter(mlp, mlp_input):
    inputs = prepare(mlp, mlp_input)
    assert inputs.names == ["x"]
    assert inputs.tensors()[0].data_ptr() == mlp_input.data_ptr()  # same dtype and device: no copy
    torch.testing.assert_close(inputs.call(mlp), mlp(mlp_input))


def test_a_tuple_fills_parameters_in_order():
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    inputs = prepare(TwoInputs(), (x, y))
    assert inputs.names == ["x", "y"]
    assert [t.data_ptr() for t in inputs.tensors()] == [x.data_ptr(), y.data_ptr()]


def test_a_dict_keyed_by_parameter_names_is_keyword_arguments_in_signature_order():
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    inputs = prepare(TwoInputs(), {"y": y, "x": x})
    assert inputs.names == ["x", "y"]
    assert inputs.tensors()[0].data_ptr() == x.data_ptr()


def test_a_dict_for_a_forward_taking_one_dict_is_that_argument_named_by_its_keys():
    batch = {"features": torch.randn(2, 4), "mask": torch.ones(2, 2)}
    model = OneDict()
    inputs = prepare(model, batch)
    assert inputs.names == ["features", "mask"]
    torch.testing.assert_close(inputs.call(model), model(batch))


def test_a_dict_for_forward_kwargs_is_named_by_its_keys():
    inputs = prepare(AnyKeywords(), {"b": torch.ones(2), "a": torch.zeros(2)})
    assert inputs.names == ["b", "a"]
    torch.testing.assert_close(inputs.call(AnyKeywords()), torch.ones(2))


def test_inputs_that_do_not_fit_forward_show_its_signature(mlp):
    with pytest.raises(InputError, match=r"do not fit forward\(x: torch.Tensor\) -> torch.Tensor") as error:
        prepare(mlp, (torch.randn(2, 4), torch.randn(2, 4)))
    assert "too many positional arguments" in str(error.value)
    with pytest.raises(InputError, match=r"forward\(x: torch.Tensor, y: torch.Tensor\)"):
        prepare(TwoInputs(), {"x": torch.randn(2, 4)})


def test_inputs_without_a_tensor_are_refused(mlp):
    with pytest.raises(InputError, match="contain no tensor"):
        prepare(mlp, 3.0)


def test_input_names_from_the_config_replace_derived_names_one_for_one():
    inputs = prepare(TwoInputs(), (torch.randn(2, 4), torch.randn(2, 4)), input_names=["left", "right"])
    assert inputs.names == ["left", "right"]
    with pytest.raises(ConfigError, match=r"has 1 names but the example inputs have 2 tensors \(x, y\)"):
        prepare(TwoInputs(), (torch.randn(2, 4), torch.randn(2, 4)), input_names=["only"])


# -- where inputs come from when none are given ---------------------------------------------


def test_no_inputs_uses_the_lightning_style_example_input_array():
    inputs = prepare(WithExampleArray(), None)
    assert inputs.names == ["x"]
    assert inputs.tensors()[0].shape == (3, 4)


def test_the_config_spec_comes_before_example_input_array():
    # An explicit setting (export.inputs) beats an attribute of the model, in every door.
    inputs = prepare(WithExampleArray(), None, inputs=[{"name": "x", "shape": [2, 4]}])
    assert inputs.tensors()[0].shape == (2, 4)
    assert not torch.equal(inputs.tensors()[0], torch.ones(2, 4))


def test_given_inputs_come_before_the_config_spec():
    inputs = prepare(WithExampleArray(), torch.zeros(5, 4), inputs=[{"name": "x", "shape": [2, 4]}])
    assert torch.equal(inputs.tensors()[0], torch.zeros(5, 4))


def test_one_function_orders_given_spec_attribute_then_the_doors_fallback():
    from onnxport.config import ExportConfig
    from onnxport.inputs import choose_example_inputs

    spec = ExportConfig.coerce(None, inputs=[{"name": "x", "shape": [2, 4]}])
    bare = ExportConfig()
    first_batch = lambda: torch.full((6, 4), 7.0)  # noqa: E731
    model = WithExampleArray()
    choose = choose_example_inputs
    assert choose(model, torch.zeros(1, 4), spec, fallback=first_batch)[1] == "given"
    assert choose(model, None, spec, fallback=first_batch)[1] == "export.inputs"
    assert choose(model, None, bare, fallback=first_batch)[1] == "example_input_array"
    model.example_input_array = None
    chosen, source = choose(model, None, bare, fallback=first_batch, fallback_source="the first train batch")
    assert source == "the first train batch" and torch.equal(chosen, torch.full((6, 4), 7.0))
    with pytest.raises(InputError, match="no example inputs for WithExampleArray"):
        choose(model, None, bare)


def test_no_inputs_uses_the_config_spec_with_integer_ranges():
    spec = {"name": "input_ids", "shape": [2, 7], "dtype": "int64", "low": 0, "high": 50}
    inputs = prepare(TokenClassifier(), None, inputs=[spec])
    (ids,) = inputs.tensors()
    assert inputs.names == ["input_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (2, 7)
    assert int(ids.min()) >= 0 and int(ids.max()) < 50
    assert inputs.specs["input_ids"].high == 50


def test_no_inputs_anywhere_is_a_clear_error(mlp):
    with pytest.raises(InputError, match="no example inputs for TinyMLP") as error:
        prepare(mlp, None)
    assert "export.inputs" in error.value.fix


# -- device and dtype -----------------------------------------------------------------------


def test_floating_inputs_move_to_the_model_dtype_and_integers_keep_theirs():
    model = nn.Embedding(10, 3).double()
    inputs = prepare(TwoInputsAnyDtype(model), (torch.randn(2, 3), torch.tensor([[1, 2, 3], [4, 5, 6]])))
    floats, ints = inputs.tensors()
    assert floats.dtype == torch.float64
    assert ints.dtype == torch.int64


class TwoInputsAnyDtype(nn.Module):
    def __init__(self, embed: nn.Module) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, scale: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids) * scale


def test_inputs_move_to_the_model_device():
    model = TinyMLP().to("meta")  # a real second device on a CPU-only machine
    inputs = prepare(model, torch.randn(2, 4))
    assert inputs.tensors()[0].device.type == "meta"


# -- ModelInputs ----------------------------------------------------------------------------


def test_feed_and_with_tensors_keep_names_and_structure():
    batch = {"features": torch.randn(2, 4), "mask": torch.ones(2, 2)}
    inputs = prepare(OneDict(), batch)
    feed = inputs.feed()
    assert list(feed) == ["features", "mask"] and feed["features"].shape == (2, 4)

    bigger = inputs.with_tensors([torch.randn(5, 4), torch.ones(5, 2)])
    assert bigger.names == inputs.names
    assert bigger.call(OneDict()).shape == (5, 2)
    assert inputs.tensors()[0].shape == (2, 4)  # the original is untouched


# -- output names ---------------------------------------------------------------------------


@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    hidden: tuple[torch.Tensor, ...]
    loss: torch.Tensor | None = None


class Pair(NamedTuple):
    mean: torch.Tensor
    std: torch.Tensor


def test_output_names_follow_the_output_structure():
    t = torch.zeros(1)
    assert [n for n, _ in flatten_outputs(t)] == ["output"]
    assert [n for n, _ in flatten_outputs((t, t))] == ["output_0", "output_1"]
    assert [n for n, _ in flatten_outputs(DictOutput()(torch.randn(2, 4)))] == [
        "logits",
        "extra.probs",
        "extra.norm",
    ]
    assert [n for n, _ in flatten_outputs(Prediction(t, (t, t)))] == ["logits", "hidden.0", "hidden.1"]
    assert [n for n, _ in flatten_outputs(Pair(t, t))] == ["mean", "std"]
    assert [n for n, _ in flatten_outputs((t, {"a": t, "b": None}, 3))] == ["output_0", "output_1.a"]


# -- dynamic axes ---------------------------------------------------------------------------


def test_dynamic_batch_makes_axis_zero_of_inputs_and_batch_sized_outputs_dynamic():
    model = TwoInputs()
    inputs = prepare(model, (torch.randn(3, 4), torch.randn(3, 4)))
    outputs = [torch.zeros(3, 4), torch.zeros(4)]  # the second output's axis 0 is not the batch
    axes = resolve_dynamic_axes(inputs, ["sum", "dot"], ExportConfig(), outputs)
    assert axes == {"x": {0: "batch"}, "y": {0: "batch"}, "sum": {0: "batch"}}


def test_dynamic_axes_override_per_name_with_string_axis_keys_as_from_yaml():
    inputs = prepare(TwoInputs(), (torch.randn(3, 4), torch.randn(3, 4)))
    config = ExportConfig.coerce(None, dynamic_axes={"x": {"0": "n", "1": "features"}, "y": {}})
    axes = resolve_dynamic_axes(inputs, ["output_0", "output_1"], config)
    assert axes["x"] == {0: "n", 1: "features"}
    assert "y" not in axes  # {} makes y static
    assert axes["output_0"] == {0: "batch"}


def test_dynamic_batch_off_and_the_list_form():
    inputs = prepare(TinyMLP(), torch.randn(3, 4))
    config = ExportConfig.coerce(None, dynamic_batch=False, dynamic_axes={"x": [1]})
    assert resolve_dynamic_axes(inputs, ["output"], config) == {"x": {1: "x_dim_1"}}


def test_dynamic_axes_for_an_unknown_name_or_axis_are_config_errors():
    inputs = prepare(TinyMLP(), torch.randn(3, 4))
    with pytest.raises(ConfigError, match=r"names 'image'.*inputs: x; outputs: output"):
        resolve_dynamic_axes(inputs, ["output"], ExportConfig.coerce(None, dynamic_axes={"image": {0: "b"}}))
    with pytest.raises(ConfigError, match="has axis 2 but x has 2 dimensions"):
        resolve_dynamic_axes(inputs, ["output"], ExportConfig.coerce(None, dynamic_axes={"x": {2: "b"}}))


class Unbatched(nn.Module):
    """Takes a list of 3xHxW images, as torchvision's detection models do: axis 0 is the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.conv(image.unsqueeze(0)).mean() for image in images])


class WithTable(nn.Module):
    """A batch ``x`` and a lookup ``table`` whose axis 0 is not the batch; the output sums over the batch."""

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ table.T, x.sum(dim=0)


def test_axis_0_stays_static_where_the_model_does_not_run_with_it_changed(caplog):
    model = Unbatched().eval()
    inputs = prepare(model, ([torch.randn(3, 8, 8), torch.randn(3, 8, 8)],))
    with caplog.at_level("INFO", logger="onnxport.inputs"):
        axes = resolve_dynamic_axes(inputs, ["output"], ExportConfig(), [torch.zeros(2)], model=model)
    assert axes == {}
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("kept static: axis 0 of images.0, images.1 (Unbatched raised at 4: RuntimeError")


def test_only_inputs_of_the_batch_size_and_outputs_that_follow_the_batch_are_dynamic(caplog):
    model = WithTable().eval()
    x, table = torch.randn(4, 3), torch.randn(5, 3)
    inputs = prepare(model, (x, table))
    outputs = list(model(x, table))  # sum: shape (3,), the batch is 4
    with caplog.at_level("INFO", logger="onnxport.inputs"):
        axes = resolve_dynamic_axes(inputs, ["scores", "sum"], ExportConfig(), outputs, model=model)
    assert axes == {"x": {0: "batch"}, "scores": {0: "batch"}}
    assert "axis 0 of table (size 5, the batch is 4)" in caplog.text
    # the user's word wins: dynamic_axes is not probed
    config = ExportConfig.coerce(None, dynamic_axes={"table": {0: "rows"}})
    assert resolve_dynamic_axes(inputs, ["scores", "sum"], config, outputs, model=model)["table"] == {
        0: "rows"
    }


def test_an_unbatched_image_list_exports_static_and_validates(tmp_path):
    model = Unbatched().eval()
    result = onnxport.export(model, ([torch.randn(3, 8, 8), torch.randn(3, 8, 8)],), tmp_path / "m.onnx")
    assert result.dynamic_axes == {} and result.validation.passed


# -- generated inputs -----------------------------------------------------------------------


def test_generated_inputs_are_seeded_ranged_and_resizable():
    specs = [
        InputSpec(name="image", shape=[2, 1, 8, 8]),
        InputSpec(name="ids", shape=[2, 5], dtype="int32", low=3, high=6),
        InputSpec(name="weight", shape=[2], dtype="float16", low=-1.0, high=1.0),
    ]
    first = generate_inputs(specs, seed=7)
    again = generate_inputs(specs, seed=7)
    other = generate_inputs(specs, seed=8)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["image"], other["image"])
    assert first["ids"].dtype == torch.int32
    assert set(first["ids"].unique().tolist()) <= {3, 4, 5}
    assert first["weight"].dtype == torch.float16 and float(first["weight"].abs().max()) <= 1.0

    resized = generate_inputs(specs, seed=7, sizes={"image": {0: 5, 2: 4}})
    assert resized["image"].shape == (5, 1, 4, 8)


def test_an_empty_integer_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"export.inputs\[ids\] has low=5 >= high=5"):
        generate_inputs([InputSpec(name="ids", shape=[2], dtype="int64", low=5, high=5)], seed=0)


def test_generated_inputs_follow_the_names_a_tokenizer_fills_when_no_range_pins_them():
    specs = [
        InputSpec(name="input_ids", shape=[4, 6], dtype="int64"),
        InputSpec(name="attention_mask", shape=[4, 6], dtype="int64"),
        InputSpec(name="token_type_ids", shape=[4, 6], dtype="int64"),
        InputSpec(name="position_ids", shape=[4, 6], dtype="int64"),
        InputSpec(name="attention_mask_pinned", shape=[4, 6], dtype="int64", low=0, high=2),
    ]
    generated = generate_inputs(specs, seed=3)
    assert int(generated["input_ids"].min()) >= 0 and int(generated["input_ids"].max()) < 10
    assert is_padded(generated["attention_mask"], right=True)
    assert not generated["token_type_ids"].any()
    assert torch.equal(generated["position_ids"], torch.arange(6).expand(4, 6))
    assert set(generated["attention_mask_pinned"].unique().tolist()) <= {0, 1}  # the range pins it


# -- values like the example's --------------------------------------------------------------


def is_padded(mask: torch.Tensor, *, right: bool) -> bool:
    """Every row a run of ones at the start (right padding) or the end (left padding), never empty."""
    rows = mask.long().reshape(-1, mask.shape[-1])
    steps = rows.diff(dim=1)
    ordered = bool((steps <= 0).all()) if right else bool((steps >= 0).all())
    return ordered and bool((rows.sum(dim=1) > 0).all())


def like(example: dict, sizes: dict, seed: int = 0, **options) -> dict[str, torch.Tensor]:
    inputs = ModelInputs((), example, list(example))
    generated = generate_like(inputs, sizes, seed, **options)
    return dict(zip(inputs.names, generated.tensors(), strict=True))


@pytest.mark.parametrize("right", [True, False])
def test_a_padded_mask_stays_padded_with_row_lengths_varied_and_no_empty_row(right):
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]) if right else torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    for dtype in (torch.int64, torch.bool):
        generated = like({"attention_mask": mask.to(dtype)}, {"attention_mask": {0: 64, 1: 9}})[
            "attention_mask"
        ]
        assert generated.dtype == dtype and generated.shape == (64, 9)
        assert is_padded(generated, right=right)
        lengths = generated.long().sum(dim=1)
        assert int(lengths[0]) == 9 and len(lengths.unique()) > 3  # one full row, the others varied


def test_a_full_mask_becomes_right_padded_and_an_empty_row_stays_possible_only_for_padding_flags():
    full = like({"attention_mask": torch.ones(2, 5, dtype=torch.long)}, {"attention_mask": {0: 32}})
    assert is_padded(full["attention_mask"], right=True)
    # PyTorch's key_padding_mask marks padding with True: a row with no True is the unpadded one
    flags = torch.tensor([[False, False, False], [False, True, True]])
    generated = like({"key_padding_mask": flags}, {"key_padding_mask": {0: 32}})["key_padding_mask"]
    assert bool((~generated).any(dim=1).all())  # never a row that is all padding
    assert not bool(generated[0].any())


def test_type_ids_keep_their_segments_and_position_ids_stay_a_range():
    example = {
        "token_type_ids": torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]),
        "zeros_type_ids": torch.zeros(2, 5, dtype=torch.long),
        "position_ids": torch.arange(5).expand(2, 5),
    }
    sizes = {name: {0: 16, 1: 8} for name in example}
    generated = like(example, sizes)
    segments = generated["token_type_ids"]
    assert bool((segments.diff(dim=1) >= 0).all()) and set(segments.unique().tolist()) == {0, 1}
    assert bool((segments[:, 0] == 0).all())  # the first segment is never empty
    assert not generated["zeros_type_ids"].any()
    assert torch.equal(generated["position_ids"], torch.arange(8).expand(16, 8))


def test_integers_stay_in_the_observed_range_and_token_ids_below_the_vocabulary():
    example = {"input_ids": torch.tensor([[3, 40], [7, 120]]), "labels": torch.tensor([2, 5])}
    generated = like(example, {"input_ids": {0: 50, 1: 20}, "labels": {0: 50}}, vocab_size=100)
    assert int(generated["input_ids"].min()) >= 3 and int(generated["input_ids"].max()) < 100
    assert int(generated["labels"].min()) >= 2 and int(generated["labels"].max()) <= 5
    floats = like({"x": torch.randn(2, 3)}, {"x": {0: 4}})["x"]
    assert floats.shape == (4, 3) and floats.dtype == torch.float32


def test_a_range_in_export_inputs_pins_the_values_and_generation_is_seeded():
    inputs = ModelInputs((), {"attention_mask": torch.ones(2, 4, dtype=torch.long)}, ["attention_mask"])
    pinned = dataclasses.replace(
        inputs, specs={"attention_mask": InputSpec("attention_mask", [2, 4], "int64", 5, 7)}
    )
    assert set(generate_like(pinned, {}, 0).tensors()[0].unique().tolist()) <= {5, 6}
    first, again = (generate_like(inputs, {"attention_mask": {0: 8}}, 4).tensors()[0] for _ in range(2))
    assert torch.equal(first, again)


def test_patterns_read_from_examples():
    assert pattern_of("x", torch.randn(2, 3)) == ValuePattern("normal")
    assert pattern_of("flag", torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)) == ValuePattern("binary")
    assert pattern_of("ids", torch.tensor([4, 4])) == ValuePattern("constant", 4)
    assert pattern_of("mask", torch.tensor([[1, 0, 1], [1, 1, 1]])) == ValuePattern("binary", 1)
    assert pattern_of("mask", torch.tensor([[0, 1], [1, 1]])).kind == "left_padded"
    assert pattern_of("level", torch.tensor(3)) == ValuePattern("constant", 3)


# -- the same order through every door (the callback's case is in test_callback.py) -----------


class ScaledByOptional(nn.Module):
    """``example_input_array`` gives only ``x``; an ``export.inputs`` spec can add ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.example_input_array = torch.randn(2, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.fc(x)
        return y if scale is None else y * scale


BOTH = [{"name": "x", "shape": [2, 4]}, {"name": "scale", "shape": [2, 3]}]
FAST = {"latency_runs": 0, "sizes": [2]}


@pytest.mark.slow
def test_api_export_takes_given_then_export_inputs_then_example_input_array(tmp_path):
    import onnxport
    from conftest import onnx_input_names

    model = ScaledByOptional()
    onnxport.export(model, None, tmp_path / "spec.onnx", inputs=BOTH, validation=FAST)
    assert onnx_input_names(tmp_path / "spec.onnx") == ["x", "scale"]
    onnxport.export(model, torch.randn(2, 4), tmp_path / "given.onnx", inputs=BOTH, validation=FAST)
    assert onnx_input_names(tmp_path / "given.onnx") == ["x"]
    onnxport.export(model, None, tmp_path / "attribute.onnx", validation=FAST)
    assert onnx_input_names(tmp_path / "attribute.onnx") == ["x"]


@pytest.mark.slow
def test_cli_export_inputs_win_over_example_input_array(tmp_path, monkeypatch):
    from conftest import onnx_input_names
    from onnxport.cli import main

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        "model: {_target_: test_inputs.ScaledByOptional}\n"
        "checkpoint: weights.pt\n"
        "output: model.onnx\n"
        "export:\n"
        "  inputs: [{name: x, shape: [2, 4]}, {name: scale, shape: [2, 3]}]\n"
        "  validation: {latency_runs: 0, sizes: [2]}\n"
    )
    torch.save(ScaledByOptional().state_dict(), tmp_path / "weights.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--config-dir", "conf"]) == 0
    assert onnx_input_names(tmp_path / "model.onnx") == ["x", "scale"]


def test_meta_tensors_are_input_errors_not_crashes(tmp_path):
    model = nn.Linear(4, 2)
    with pytest.raises(InputError, match="example input of shape \\[2, 4\\] is on the meta device"):
        onnxport.export(model, torch.empty(2, 4, device="meta"), tmp_path / "meta.onnx")
    with torch.device("meta"):
        unmaterialised = nn.Linear(4, 2)
    with pytest.raises(InputError, match="weights are on the meta device"):
        onnxport.export(unmaterialised, torch.randn(2, 4), tmp_path / "meta.onnx")
    assert not (tmp_path / "meta.onnx").exists()
