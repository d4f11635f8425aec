"""The reference pipeline under the real ``dvc`` command, in a temporary copy of the repository.

One ``dvc repro`` from clean is shared by the whole module; the tests then run in file order,
each leaving the copy reproduced and clean for the next (pytest keeps definition order).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's dvc and onnxport


@dataclass
class Pipeline:
    root: Path
    first_repro: str
    first_repro_seconds: float


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


def dvc(root: Path, *args: str) -> str:
    return run([str(BIN / "dvc"), *args], root)


def git(root: Path, *args: str) -> str:
    return run(["git", *args], root)


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def locked_md5(root: Path, path: str) -> str:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs = [out for stage in lock["stages"].values() for out in stage.get("outs", [])]
    return next(out["md5"] for out in outs if out["path"] == path)


def opset_and_version(path: Path) -> tuple[int, int]:
    import onnx

    model = onnx.load(str(path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), model.model_version


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """A git repository holding this checkout's files (tracked and new), after one ``dvc repro``."""
    root = tmp_path_factory.mktemp("dvc") / "repo"
    listed = git(REPO_ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    for name in filter(None, listed.split("\0")):
        if name == "dvc.lock":  # left by a local `make run`; the copy starts from a clean clone's state
            continue
        source = REPO_ROOT / name
        if source.is_file():  # listed but deleted in the working tree
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "copy of the onnxport checkout")

    start = time.perf_counter()
    output = dvc(root, "repro")
    seconds = time.perf_counter() - start
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "dvc repro")
    return Pipeline(root, output, seconds)


def test_first_repro_runs_every_stage_and_writes_model_and_metrics(pipeline: Pipeline):
    assert ran_stages(pipeline.first_repro) == ["prepare", "train", "export", "evaluate"]
    assert pipeline.first_repro_seconds < 120
    root = pipeline.root
    assert (root / "models" / "model.onnx").is_file()
    assert (root / "checkpoints" / "best.onnx").is_file()  # OnnxExportCallback in the train stage
    assert json.loads((root / "metrics" / "validation.json").read_text())["passed"] in (True, 1)
    accuracy = json.loads((root / "metrics" / "accuracy.json").read_text())
    assert accuracy["onnx_accuracy"] > 0.9
    assert accuracy["onnx_accuracy"] == pytest.approx(accuracy["torch_accuracy"], abs=1 / 270)


def test_summary_says_where_the_model_is_and_its_accuracy(pipeline: Pipeline):
    text = run([sys.executable, "-m", "pipelines.summary"], pipeline.root)
    assert str(pipeline.root / "models" / "model.onnx") in text
    accuracy = json.loads((pipeline.root / "metrics" / "accuracy.json").read_text())
    assert f"{accuracy['onnx_accuracy']:.4f} in ONNX Runtime" in text


def test_second_repro_runs_nothing(pipeline: Pipeline):
    output = dvc(pipeline.root, "repro")
    assert ran_stages(output) == []
    assert "Data and pipelines are up to date" in output


def test_metrics_show_lists_validation_and_accuracy(pipeline: Pipeline):
    shown = json.loads(dvc(pipeline.root, "metrics", "show", "--json"))
    workspace = next(iter(shown.values()))["data"]
    validation = workspace["metrics/validation.json"]["data"]
    accuracy = workspace["metrics/accuracy.json"]["data"]
    assert validation["passed"] in (True, 1) and validation["max_abs_diff"] < 1e-3
    assert {"onnx_accuracy", "torch_accuracy", "prediction_agreement"} <= set(accuracy)
    table = dvc(pipeline.root, "metrics", "show")
    assert "onnx_accuracy" in table and "max_abs_diff" in table


def test_plots_show_renders_the_latency_plot(pipeline: Pipeline, tmp_path: Path):
    dvc(pipeline.root, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "Latency per batch" in html
    assert "onnxruntime_ms" in html and "torch_ms" in html


def test_forced_export_rerun_writes_the_same_md5(pipeline: Pipeline):
    before = locked_md5(pipeline.root, "models/model.onnx")
    output = dvc(pipeline.root, "repro", "--force", "--single-item", "export")
    assert ran_stages(output) == ["export"]
    assert locked_md5(pipeline.root, "models/model.onnx") == before
    assert ran_stages(dvc(pipeline.root, "repro")) == []  # evaluate sees the same model: nothing to do
    git(pipeline.root, "commit", "-q", "-am", "forced export")


def test_push_then_pull_into_a_fresh_clone_brings_the_same_model(pipeline: Pipeline, tmp_path: Path):
    root = pipeline.root
    dvc(root, "remote", "add", "--default", "store", str(tmp_path / "remote"))
    git(root, "commit", "-q", "-am", "local dvc remote")
    dvc(root, "push")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    assert not (clone / "models" / "model.onnx").exists()
    dvc(clone, "pull")
    pulled = (clone / "models" / "model.onnx").read_bytes()
    assert pulled == (root / "models" / "model.onnx").read_bytes()
    assert locked_md5(clone, "models/model.onnx") == locked_md5(root, "models/model.onnx")


def test_editing_conf_export_reruns_export_and_evaluate_only(pipeline: Pipeline):
    conf = pipeline.root / "conf" / "export" / "default.yaml"
    text = conf.read_text()
    assert "\nmodel_version: 0\n" in text
    conf.write_text(text.replace("\nmodel_version: 0\n", "\nmodel_version: 3\n"))

    output = dvc(pipeline.root, "repro")
    assert ran_stages(output) == ["export", "evaluate"]
    assert opset_and_version(pipeline.root / "models" / "model.onnx")[1] == 3
    # The export stage wrote the edit back to params.yaml, so dvc.lock records what ran.
    params = yaml.safe_load((pipeline.root / "params.yaml").read_text())
    assert params["export"]["model_version"] == 3
    assert ran_stages(dvc(pipeline.root, "repro")) == []
    git(pipeline.root, "commit", "-q", "-am", "model_version 3")


def test_exp_run_set_opset_17_gives_an_opset_17_model(pipeline: Pipeline):
    assert opset_and_version(pipeline.root / "models" / "model.onnx")[0] == 18  # conf/export's opset
    output = dvc(pipeline.root, "exp", "run", "-S", "export.opset=17", "-S", "evaluate.batch_sizes=[1,4]")
    assert ran_stages(output) == ["export", "evaluate"]
    assert opset_and_version(pipeline.root / "models" / "model.onnx")[0] == 17
    params = yaml.safe_load((pipeline.root / "params.yaml").read_text())
    assert params["export"]["opset"] == 17
    # The model registry's view: the artifact's meta is read from the same params.
    from dvc.repo import Repo

    with Repo(str(pipeline.root)) as repo:
        artifact = repo.artifacts.read()["dvc.yaml"]["digits-cnn"]
    assert artifact.path == "models/model.onnx" and artifact.type == "model"
    assert artifact.meta["opset"] == 17
    assert artifact.meta["inputs"] == params["export"]["inputs"]
    # The pipeline's own stages see -S too, not only `onnxport export`.
    latency = json.loads((pipeline.root / "plots" / "latency.json").read_text())
    assert [row["batch_size"] for row in latency] == [1, 4]


def quick_start_snippets() -> tuple[str, str]:
    """The ``conf/onnx.yaml`` and ``dvc.yaml`` blocks of the README's DVC quick start."""
    text = (REPO_ROOT / "README.md").read_text()
    quick_start = text[text.index("## Quick start: DVC stage") :]
    conf, stage = re.findall(r"```yaml\n(.*?)```", quick_start, flags=re.S)[:2]
    return conf, stage


def test_quick_start_adds_the_stage_to_an_existing_project(pipeline: Pipeline, tmp_path: Path):
    # An existing DVC + Hydra project: model code, a training config with `model:`, a checkpoint.
    project = tmp_path / "project"
    shutil.copytree(pipeline.root / "pipelines", project / "pipelines")
    shutil.copytree(pipeline.root / "conf" / "model", project / "conf" / "model")
    (project / "conf" / "config.yaml").write_text("defaults:\n  - model: digits_cnn\n  - _self_\n")
    (project / "checkpoints").mkdir()
    shutil.copy2(pipeline.root / "checkpoints" / "best.ckpt", project / "checkpoints")
    (project / ".gitignore").write_text("/checkpoints/\n__pycache__/\n")
    git(project, "init", "-q", "-b", "main")
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")

    conf, stage = quick_start_snippets()
    (project / "conf" / "onnx.yaml").write_text(conf)
    (project / "dvc.yaml").write_text(stage)
    dvc(project, "config", "hydra.enabled", "true")
    dvc(project, "config", "hydra.config_name", "onnx")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "add the onnxport export stage")

    assert ran_stages(dvc(project, "exp", "run")) == ["export"]
    assert opset_and_version(project / "models" / "model.onnx")[0] == 18
    assert (project / "metrics" / "validation.json").is_file()
    assert ran_stages(dvc(project, "repro")) == []
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "export")
    assert ran_stages(dvc(project, "exp", "run", "-S", "export.opset=17")) == ["export"]
    assert opset_and_version(project / "models" / "model.onnx")[0] == 17
