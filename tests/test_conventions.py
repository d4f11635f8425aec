"""Conventions of transformers models: sequence axes, no cache, outputs named by ModelOutput fields.

The models are built from tiny configs with random weights (no download); each goes through
``onnxport.export`` with validation, in ONNX Runtime.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import onnxport
from conftest import TinyMLP, tiny_transformer, token_batch
from onnxport import conventions
from onnxport.model_state import preserved_state

TEXT_AXES = {0: "batch", 1: "sequence"}


@pytest.mark.slow
def test_a_plain_module_is_no_transformers_model_and_never_imports_transformers(tmp_path):
    assert not conventions.is_transformers_model(TinyMLP())
    script = (
        "import sys, torch, onnxport\n"
        "from torch import nn\n"
        "onnxport.export(nn.Linear(4, 2), torch.randn(2, 4), sys.argv[1])\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "linear.onnx"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_sequence_axes_vocabulary_and_the_config_an_export_sees():
    model = tiny_transformer("gpt2")
    names = ["input_ids", "attention_mask", "decoder_input_ids", "labels", "pixel_values"]
    assert conventions.sequence_axes(model, names, [2, 2, 2, 2, 4]) == {
        "input_ids": "sequence",
        "attention_mask": "sequence",
        "decoder_input_ids": "decoder_sequence",
    }
    assert conventions.sequence_axes(TinyMLP(), ["input_ids"], [2]) == {}
    assert conventions.vocab_size(model) == 100 and conventions.vocab_size(TinyMLP()) is None

    model.config.use_cache, model.config.return_dict = True, False
    with preserved_state(model):
        assert (model.config.use_cache, model.config.return_dict) == (False, True)
    assert (model.config.use_cache, model.config.return_dict) == (True, False)  # the caller's, back


def export(kind: str, tmp_path, example=None, **options) -> onnxport.ExportResult:
    model = tiny_transformer(kind)
    example = token_batch() if example is None else example
    result = onnxport.export(
        model, example, tmp_path / f"{kind}.onnx", validation={"latency_runs": 0}, **options
    )
    assert result.validation.passed, result.validation.summary()
    return result


@pytest.mark.slow
def test_a_bert_style_encoder_gets_batch_and_sequence_axes_and_fields_as_output_names(tmp_path):
    example = {**token_batch(), "token_type_ids": torch.tensor([[0] * 4 + [1] * 4, [0] * 6 + [1] * 2])}
    result = export("bert", tmp_path, example)
    assert result.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert result.output_names == ["last_hidden_state", "pooler_output"]
    assert result.dynamic_axes == {
        "input_ids": TEXT_AXES,
        "attention_mask": TEXT_AXES,
        "token_type_ids": TEXT_AXES,
        "last_hidden_state": TEXT_AXES,
        "pooler_output": {0: "batch"},
    }
    labels = {case.label for case in result.validation.cases}
    assert {"batch=1,sequence=8", "batch=2,sequence=17", "batch=5,sequence=17"} <= labels


@pytest.mark.slow
def test_a_decoder_only_lm_is_exported_without_a_cache(tmp_path):
    model_config_use_cache = tiny_transformer("gpt2").config.use_cache
    result = export("gpt2", tmp_path)
    assert model_config_use_cache  # the config asks for a cache; the export leaves it out
    assert result.output_names == ["logits"]
    assert result.dynamic_axes["logits"] == TEXT_AXES


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])  # decoders, left-padded for generation
def test_a_left_padded_causal_model_passes_and_its_padded_positions_are_left_out(kind, tmp_path):
    # Left padding leaves the first query rows with no token to attend to: eager attention gives 0
    # there, the exported graph the mean of the values. Nobody reads those positions.
    result = export(kind, tmp_path, token_batch(padded="left"))
    skipped = [check.padding_skipped for case in result.validation.cases for check in case.outputs]
    assert max(skipped) > 0
    padded = [case for case in result.validation.cases if any(c.padding_skipped for c in case.outputs)]
    assert all(case.passed for case in padded)


@pytest.mark.slow
def test_a_causal_text_encoder_and_an_encoder_that_needs_the_torchscript_fallback(tmp_path):
    clip = export("clip", tmp_path)
    assert clip.output_names == ["last_hidden_state", "pooler_output"]
    t5 = export("t5-encoder", tmp_path)
    assert t5.exporter == "torchscript" and t5.output_names == ["last_hidden_state"]
    assert t5.dynamic_axes["input_ids"] == TEXT_AXES


@pytest.mark.slow
def test_the_users_dynamic_axes_win_over_the_convention(tmp_path):
    static_sequence = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    result = export("llama", tmp_path, dynamic_axes=static_sequence)
    assert result.dynamic_axes["input_ids"] == {0: "batch"}
    assert {case.label for case in result.validation.cases} == {"batch=2", "batch=1", "batch=5"}


@pytest.mark.slow
def test_a_sequence_axis_the_model_refuses_to_change_stays_static_with_one_line(tmp_path, caplog):
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    model = transformers.BertForMaskedLM(config).eval()
    # labels of the example's length: a shorter text no longer matches them, a larger batch does
    example = {**token_batch(), "labels": torch.randint(0, 100, (2, 8))}
    with caplog.at_level("INFO", logger="onnxport.inputs"):
        result = onnxport.export(model, example, tmp_path / "mlm.onnx", validation={"latency_runs": 0})
    assert result.output_names == ["loss", "logits"]
    assert result.dynamic_axes == {
        name: {0: "batch"} for name in ["input_ids", "attention_mask", "labels", "logits"]
    }
    [line] = [r.getMessage() for r in caplog.records if r.name == "onnxport.inputs"]
    assert line.startswith("kept static: the sequence axis of attention_mask, input_ids (the model raised")


class CallsAnLM(torch.nn.Module):
    """A wrapper (as a LightningModule is) that returns the whole output of the LM it calls."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = tiny_transformer("gpt2")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.slow
def test_an_lm_inside_a_wrapper_is_exported_without_a_cache_too(tmp_path):
    wrapper = CallsAnLM().eval()
    result = onnxport.export(
        wrapper, token_batch(), tmp_path / "wrapped.onnx", validation={"latency_runs": 0}
    )
    assert result.validation.passed and result.output_names == ["logits"]
    assert wrapper.lm.config.use_cache  # the caller's config, back
