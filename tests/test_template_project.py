"""The template-shaped fixture project (tests/template/): it composes and trains as the template does,
and its checkpoints export with no trust flag through the CLI's work function and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_template, run_onnx, train_template

ONNXPORT = str(Path(sys.executable).with_name("onnxport"))
# The template's module has no example_input_array: a user names the input (forward's `x`).
INPUTS = "export.inputs=[{name: x, shape: [2, 1, 8, 8]}]"


def test_the_template_configs_compose_as_the_template_writes_them(template_project):
    cfg = compose_template(template_project)
    assert cfg.model.net._target_ == "src.models.components.simple_dense_net.SimpleDenseNet"
    assert cfg.model.optimizer._partial_ is True and cfg.model.scheduler._partial_ is True
    assert cfg.paths.root_dir == str(template_project)  # ${oc.env:PROJECT_ROOT}
    assert cfg.callbacks.model_checkpoint.dirpath == cfg.paths.output_dir + "/checkpoints"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A template project after one CPU epoch of its own train(): (project, best checkpoint).

    Trained once per module; the tests run the CLI on it or load ``src`` from it themselves.
    """
    project = tmp_path_factory.mktemp("template") / "project"
    objects = train_template(project)
    return project, Path(objects["trainer"].checkpoint_callback.best_model_path)


@pytest.fixture
def in_project(trained, monkeypatch):
    """The trained project as cwd and first on sys.path, its own ``src`` imported afresh."""
    from conftest import _forget_template_modules

    project, best = trained
    _forget_template_modules()
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setenv("PROJECT_ROOT", str(project))
    yield project, best
    _forget_template_modules()


def _best_module(ckpt: Path) -> torch.nn.Module:
    from src.models.digits_module import DigitsLitModule

    # Trusted here only because this test wrote the file: the reference the export must match.
    return DigitsLitModule.load_from_checkpoint(ckpt, weights_only=False).eval()


def _assert_matches(onnx_path: Path, module: torch.nn.Module) -> None:
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    (logits,) = run_onnx(onnx_path, {"x": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, module(images).numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_the_template_project_trains_and_its_checkpoint_exports_without_trust(in_project):
    from onnxport.cli import export_from_config

    project, best = in_project
    assert best.is_relative_to(project) and best.suffix == ".ckpt"
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(best)
    assert "hydra._internal.target_policy._DeferredTarget" in unsafe  # what weights_only refuses

    output = project / "model.onnx"
    overrides = [
        f"+checkpoint={best}",
        f"+output={output}",
        f"+{INPUTS}",
        "+export.validation.latency_runs=0",
    ]
    result = export_from_config(compose_template(project, overrides))
    assert result.validation.passed
    _assert_matches(output, _best_module(best))


def _run_cli(project: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    # As a user runs it in a shell: rootutils' PROJECT_ROOT is only set inside the template's train.py.
    env = {k: v for k, v in os.environ.items() if k not in ("PROJECT_ROOT", "HYDRA_FULL_ERROR")}
    args = ["export", "--config-dir", "configs", "--config-name", "train", *overrides, INPUTS]
    return subprocess.run(
        [ONNXPORT, *args], cwd=project, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_the_onnxport_cli_exports_a_template_checkpoint(in_project):
    project, best = in_project
    runs = set((project / "logs").rglob("*"))
    output = project / "exported" / "model.onnx"
    done = _run_cli(project, f"checkpoint={best}", f"output={output}")
    assert done.returncode == 0, done.stderr
    _assert_matches(output, _best_module(best))
    assert set((project / "logs").rglob("*")) == runs  # no run dir, no log file left behind


@pytest.mark.slow
def test_the_onnxport_cli_takes_the_model_group_option_as_users_write_it(in_project):
    project, best = in_project
    output = project / "exported" / "model.onnx"
    done = _run_cli(project, f"checkpoint={best}", "model=digits", f"output={output}")
    assert done.returncode == 0, done.stderr
    _assert_matches(output, _best_module(best))
