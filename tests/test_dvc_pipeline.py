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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from conftest import train_template

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's dvc and onnxport
VARIANTS = ("opt", "fp16", "int8")  # conf/export's export.variants
MODEL_FILES = ("models/model.onnx", *(f"models/model.{name}.onnx" for name in VARIANTS))


@dataclass
class Pipeline:
    root: Path
    first_repro: str


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
    """``path``'s md5 in dvc.lock: as an out, or as a dep (a file inside the export stage's directory)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    entries = [e for stage in lock["stages"].values() for e in stage.get("outs", []) + stage.get("deps", [])]
    return next(entry["md5"] for entry in entries if entry["path"] == path)


def copy_checkout(root: Path) -> None:
    """This checkout's files (tracked and new) in a fresh git repository at ``root``, committed."""
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


def leaves(metrics: dict) -> list:
    """The values of a metrics file, nested sections flattened (as `dvc metrics show` does)."""
    return [v for value in metrics.values() for v in (leaves(value) if isinstance(value, dict) else [value])]


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def run_failing(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode != 0, f"{' '.join(args)} succeeded:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def opset_and_version(path: Path) -> tuple[int, int]:
    import onnx

    model = onnx.load(str(path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), model.model_version


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """A git repository holding this checkout's files (tracked and new), after one ``dvc repro``."""
    root = tmp_path_factory.mktemp("dvc") / "repo"
    copy_checkout(root)

    output = dvc(root, "repro")  # how long it takes is for benchmarks, not for a test to assert
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "dvc repro")
    return Pipeline(root, output)


def test_first_repro_runs_every_stage_and_writes_model_and_metrics(pipeline: Pipeline):
    assert ran_stages(pipeline.first_repro) == ["prepare", "train", "export", "evaluate"]
    root = pipeline.root
    stage_model = onnx.load(str(root / "models" / "model.onnx"))
    callback_model = onnx.load(str(root / "checkpoints" / "best.onnx"))  # OnnxExportCallback in train
    for graph in ("input", "output"):  # one export config (callbacks.onnx_export.config: ${export})
        names = [[value.name for value in getattr(m.graph, graph)] for m in (stage_model, callback_model)]
        assert names[0] == names[1], graph
    assert json.loads((root / "metrics" / "validation.json").read_text())["passed"] in (True, 1)
    accuracy = json.loads((root / "metrics" / "accuracy.json").read_text())
    assert accuracy["onnx_accuracy"] > 0.9
    assert accuracy["onnx_accuracy"] == pytest.approx(accuracy["torch_accuracy"], abs=1 / 270)
    # The variants of conf/export, made and validated in the same run, each scored on the test split.
    assert set(accuracy["variants"]) == set(VARIANTS)
    for name, row in accuracy["variants"].items():
        assert (root / "models" / f"model.{name}.onnx").stat().st_size == row["size_bytes"]
        assert row["accuracy"] > 0.9 and row["prediction_agreement"] >= 0.95, (name, row)
    assert accuracy["variants"]["opt"]["accuracy"] == accuracy["onnx_accuracy"]
    assert accuracy["variants"]["int8"]["size_bytes"] < 0.5 * (root / "models" / "model.onnx").stat().st_size


def test_a_checkout_at_another_path_publishes_byte_identical_models(pipeline: Pipeline, tmp_path: Path):
    # Lightning stores ModelCheckpoint's absolute dirpath in the checkpoint; the ONNX files must not care.
    other = tmp_path / "somewhere" / "else" / "onnxport"
    copy_checkout(other)
    assert ran_stages(dvc(other, "repro")) == ["prepare", "train", "export", "evaluate"]
    for name in (*MODEL_FILES, "checkpoints/best.onnx", "checkpoints/best.int8.onnx"):
        assert (other / name).read_bytes() == (pipeline.root / name).read_bytes(), name
    assert (other / "checkpoints/best.ckpt").read_bytes() != (
        pipeline.root / "checkpoints/best.ckpt"
    ).read_bytes()


def test_summary_says_where_the_model_is_and_its_accuracy(pipeline: Pipeline):
    text = run([sys.executable, "-m", "pipelines.summary"], pipeline.root)
    assert str(pipeline.root / "models" / "model.onnx") in text
    accuracy = json.loads((pipeline.root / "metrics" / "accuracy.json").read_text())
    assert f"{accuracy['onnx_accuracy']:.4f} in ONNX Runtime" in text
    for name, row in accuracy["variants"].items():  # `make run` prints each variant's accuracy
        assert re.search(rf"^  {name} +{row['accuracy']:.4f} .*model\.{name}\.onnx$", text, re.M), text


def test_second_repro_runs_nothing(pipeline: Pipeline):
    output = dvc(pipeline.root, "repro")
    assert ran_stages(output) == []
    assert "Data and pipelines are up to date" in output


def test_metrics_show_lists_few_readable_validation_numbers_and_accuracy(pipeline: Pipeline):
    shown = json.loads(dvc(pipeline.root, "metrics", "show", "--json"))
    workspace = next(iter(shown.values()))["data"]
    validation = workspace["metrics/validation.json"]["data"]
    accuracy = workspace["metrics/accuracy.json"]["data"]
    assert validation["passed"] == 1 and 0 < validation["tolerance_use"] < 1
    # No strings, no run context: numbers, and per variant a section of numbers.
    assert all(isinstance(value, (int, float)) for value in leaves(validation)), validation
    assert set(validation["variants"]) == set(VARIANTS)
    assert {"onnx_accuracy", "torch_accuracy", "prediction_agreement"} <= set(accuracy)
    assert {
        name: set(row) >= {"accuracy", "prediction_agreement"} for name, row in accuracy["variants"].items()
    } == {name: True for name in VARIANTS}
    report = json.loads((pipeline.root / "models" / "model.validation.json").read_text())
    assert report["run"]["onnx_sha256"] and report["cases"] >= 3  # the full report, beside the model

    table = dvc(pipeline.root, "metrics", "show", "--md")
    header, _, row = table.strip().splitlines()[:3]
    columns = [c.strip() for c in header.strip("|").split("|")]
    values = dict(zip(columns, [c.strip() for c in row.strip("|").split("|")], strict=True))
    shown_validation = [c for c in columns if c in validation]
    assert 3 <= len(shown_validation) <= 8, columns
    for column in shown_validation:
        if validation[column] != 0:  # DVC's default precision does not round it away
            assert float(values[column]) != 0.0, (column, values[column])
    assert "onnx_accuracy" in columns


def test_plots_show_renders_parity_and_latency(pipeline: Pipeline, tmp_path: Path):
    dvc(pipeline.root, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    drawn = json.loads(dvc(pipeline.root, "plots", "show", "--json"))["data"]["latency"][0]["content"]
    fields = {row.get("field") for row in drawn["data"]["values"]}
    assert {"onnxruntime_ms", "torch_ms", *(f"{name}_ms" for name in VARIANTS)} <= fields
    for title in ("Validation parity per case", "Latency per validation case", "Latency per batch"):
        assert title in html
    rendered = json.loads(dvc(pipeline.root, "plots", "show", "--json"))["data"]
    parity = rendered["parity"][0]["content"]
    rows = parity["data"]["values"]
    # The generated shape matrix, then the digits validation split (export.validation.data) in batches.
    labels = {row["label"] for row in rows}
    assert {"batch=1", "batch=2", "batch=5"} <= labels
    assert all(label.startswith("sample_") for label in labels - {"batch=1", "batch=2", "batch=5"})
    assert all(0 < float(row["tolerance_use"]) < 1 for row in rows)
    latency = rendered["validation-latency"][0]["content"]["data"]["values"]
    assert {1, 2, 5} <= {row["batch"] for row in latency}
    assert {row["rev"] for row in latency} == {"workspace"}
    assert {"onnxruntime_ms", "torch_ms"} <= {key for row in latency for key in row} | {
        row.get("field") for row in latency
    }


def test_push_then_pull_into_a_fresh_clone_brings_the_same_model(pipeline: Pipeline, tmp_path: Path):
    root = pipeline.root
    dvc(root, "remote", "add", "--default", "store", str(tmp_path / "remote"))
    git(root, "commit", "-q", "-am", "local dvc remote")
    dvc(root, "push")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    assert not (clone / "models" / "model.onnx").exists()
    dvc(clone, "pull")
    for name in MODEL_FILES:  # the variants are in the export stage's out with the fp32 file
        assert (clone / name).read_bytes() == (root / name).read_bytes(), name
    assert locked_md5(clone, "models/model.onnx") == locked_md5(root, "models/model.onnx")


def test_artifacts_get_fetches_a_tagged_model_version_into_another_repository(
    pipeline: Pipeline, tmp_path: Path
):
    # The README's registry flow: a GTO-style tag names the version; the remote set up above holds it.
    root = pipeline.root
    git(root, "tag", "-a", "digits-cnn@v1.0.0", "-m", "Registering artifact digits-cnn version v1.0.0")
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    git(consumer, "init", "-q", "-b", "main")
    dvc(consumer, "artifacts", "get", str(root), "digits-cnn", "--rev", "v1.0.0", "-o", "model.onnx")
    assert (consumer / "model.onnx").read_bytes() == (root / "models" / "model.onnx").read_bytes()
    for name in VARIANTS:  # each variant is an artifact of its own, fetched from the same commit
        git(root, "tag", "-a", f"digits-cnn-{name}@v1.0.0", "-m", f"digits-cnn-{name} v1.0.0")
        dvc(
            consumer,
            "artifacts",
            "get",
            str(root),
            f"digits-cnn-{name}",
            "--rev",
            "v1.0.0",
            "-o",
            f"{name}.onnx",
        )
        assert (consumer / f"{name}.onnx").read_bytes() == (
            root / "models" / f"model.{name}.onnx"
        ).read_bytes()


def test_a_failing_export_under_dvc_repro_keeps_the_previous_model_and_report(pipeline: Pipeline):
    root = pipeline.root
    kept = {name: tree_bytes(root / name) for name in ("models", "metrics", "plots/export")}
    conf = root / "conf" / "export" / "default.yaml"
    assert "\nvalidation:" not in conf.read_text()
    with conf.open("a") as handle:  # no tolerance at all: the float32 differences fail validation
        handle.write("validation:\n  atol: 0.0\n  rtol: 0.0\n")
    output = run_failing([str(BIN / "dvc"), "repro"], root)
    assert "validation cases failed" in output
    evidence = {name for name in tree_bytes(root / "models") if ".rejected." in name}
    assert evidence == {"model.rejected.onnx", "model.rejected.validation.json"}
    for name, files in kept.items():  # persist: DVC did not delete them first
        assert {k: v for k, v in tree_bytes(root / name).items() if k not in evidence} == files, name
    git(root, "checkout", "--", "conf", "params.yaml")
    assert ran_stages(dvc(root, "repro")) == []  # the evidence is in .dvcignore: the out is unchanged
    for name in evidence:
        (root / "models" / name).unlink()


def test_exp_run_with_another_tolerance_keeps_the_model_md5_and_skips_evaluate(pipeline: Pipeline):
    root = pipeline.root
    before = locked_md5(root, "models/model.onnx"), (root / "models" / "model.onnx").read_bytes()
    old = json.loads((root / "metrics" / "validation.json").read_text())
    output = dvc(root, "exp", "run", "-S", "export.validation.atol=1e-5")
    assert ran_stages(output) == ["export"]  # the validation ran again; evaluate sees the same model
    assert (locked_md5(root, "models/model.onnx"), (root / "models" / "model.onnx").read_bytes()) == before
    new = json.loads((root / "metrics" / "validation.json").read_text())
    assert new["tolerance_use"] > old["tolerance_use"]  # the same diffs against a tighter tolerance
    git(root, "checkout", "--", "params.yaml")
    dvc(root, "repro")  # back to conf/'s tolerance
    git(root, "commit", "-q", "-am", "after the tolerance experiment")


def test_exp_run_without_variants_removes_their_files_and_evaluate_copes(pipeline: Pipeline, tmp_path: Path):
    root = pipeline.root
    kept = {name: (root / name).read_bytes() for name in MODEL_FILES}
    output = dvc(root, "exp", "run", "-S", "export.variants=[]")
    assert ran_stages(output) == ["export", "evaluate"]  # model.onnx is the same; export.variants changed
    assert (root / "models" / "model.onnx").read_bytes() == kept["models/model.onnx"]
    assert sorted(p.name for p in (root / "models").glob("model.*.onnx")) == []
    accuracy = json.loads((root / "metrics" / "accuracy.json").read_text())
    assert accuracy["variants"] == {} and accuracy["onnx_accuracy"] > 0.9
    rows = json.loads((root / "plots" / "latency.json").read_text())
    assert all(set(row) == {"batch_size", "onnxruntime_ms", "torch_ms"} for row in rows)
    dvc(root, "plots", "show", "-o", str(tmp_path / "plots"))  # the latency plot lacks the variants' fields
    assert "model.int8.onnx" not in run([sys.executable, "-m", "pipelines.summary"], root)

    git(root, "checkout", "--", "params.yaml")
    assert ran_stages(dvc(root, "repro")) == ["export", "evaluate"]  # back to conf/'s variants
    for name, content in kept.items():  # byte-identical on re-run, the variants too
        assert (root / name).read_bytes() == content, name
    git(root, "commit", "-q", "-am", "after the no-variants experiment")


def test_editing_conf_export_reruns_export_and_evaluate_only(pipeline: Pipeline):
    conf = pipeline.root / "conf" / "export" / "default.yaml"
    assert "model_version:" not in conf.read_text()  # the schema's default, 0
    with conf.open("a") as handle:
        handle.write("model_version: 3\n")

    output = dvc(pipeline.root, "repro")
    # Not train: best.onnx is the export made when training ran (dvc.yaml's train params).
    assert ran_stages(output) == ["export", "evaluate"]
    assert opset_and_version(pipeline.root / "models" / "model.onnx")[1] == 3
    # The export stage wrote the edit back to params.yaml, so dvc.lock records what ran.
    params = yaml.safe_load((pipeline.root / "params.yaml").read_text())
    assert params["export"]["model_version"] == 3
    assert ran_stages(dvc(pipeline.root, "repro")) == []
    git(pipeline.root, "commit", "-q", "-am", "model_version 3")


def test_exp_run_set_opset_17_gives_an_opset_17_model(pipeline: Pipeline):
    assert opset_and_version(pipeline.root / "models" / "model.onnx")[0] == 18  # conf/export's opset
    git(pipeline.root, "add", "-f", "metrics", "plots")  # as a project that commits its metrics does
    git(pipeline.root, "commit", "-q", "-m", "metrics")
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
    # Parity numbers, not strings, between the opset-18 commit and the opset-17 experiment.
    diff = json.loads(dvc(pipeline.root, "metrics", "diff", "--all", "--json"))["metrics/validation.json"]
    assert {"passed", "tolerance_use", "max_abs_diff_e6"} <= set(diff)
    for key, change in diff.items():
        assert all(isinstance(change[side], (int, float)) for side in ("old", "new")), (key, change)
    # and `dvc plots diff` draws both revisions in both export-stage plots
    plotted = json.loads(dvc(pipeline.root, "plots", "diff", "HEAD", "--json"))["data"]
    for name in ("parity", "validation-latency"):
        rows = plotted[name][0]["content"]["data"]["values"]
        assert {row["rev"] for row in rows} == {"HEAD", "workspace"}, name


def quick_start_snippets() -> tuple[str, str]:
    """The ``configs/onnx.yaml`` and ``dvc.yaml`` blocks of the README's DVC quick start."""
    text = (REPO_ROOT / "README.md").read_text()
    quick_start = text[text.index("## Quick start: DVC stage") : text.index("## Commands")]
    blocks = re.findall(r"```yaml\n(.*?)```", quick_start, flags=re.S)
    conf = next(block for block in blocks if "onnxport export" in block and "defaults:" in block)
    stage = next(block for block in blocks if block.startswith("stages:"))
    return conf, stage


def test_quick_start_adds_the_stage_to_an_existing_project(tmp_path: Path):
    # A lightning-hydra-template-shaped project (tests/template/, on digits) after its own training.
    project = tmp_path / "project"
    train_template(project, [f"callbacks.model_checkpoint.dirpath={project}/checkpoints"])
    assert (project / "checkpoints" / "last.ckpt").is_file()
    with (project / ".gitignore").open("a") as ignore:
        ignore.write("/checkpoints/\n*.rejected.*\n")
    git(project, "init", "-q", "-b", "main")
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")
    with (project / ".dvcignore").open("a") as ignore:
        ignore.write("*.rejected.*\n")

    conf, stage = quick_start_snippets()
    assert "shape: [2, 1, 28, 28]" in conf  # the README's MNIST; this template project is on 8x8 digits
    (project / "configs" / "onnx.yaml").write_text(conf.replace("[2, 1, 28, 28]", "[2, 1, 8, 8]"))
    (project / "dvc.yaml").write_text(stage)
    dvc(project, "config", "hydra.enabled", "true")
    dvc(project, "config", "hydra.config_dir", "configs")
    dvc(project, "config", "hydra.config_name", "onnx")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "add the onnxport export stage")

    before = {path.name for path in project.iterdir()}
    assert ran_stages(dvc(project, "exp", "run")) == ["export"]
    assert opset_and_version(project / "models" / "model.onnx")[0] == 18
    assert (project / "metrics" / "validation.json").is_file()
    # Nothing left behind by Hydra (no logs/ run dir, no .hydra/): only the stage's outs and DVC's files.
    assert {path.name for path in project.iterdir()} - before <= {
        "models",
        "metrics",
        "plots",
        "params.yaml",
        "dvc.lock",
    }
    assert ran_stages(dvc(project, "repro")) == []
    dvc(project, "plots", "show", "-o", str(tmp_path / "quick_plots"))
    html = (tmp_path / "quick_plots" / "index.html").read_text()
    assert "Validation parity per case" in html and "Latency per validation case" in html
    inspected = run([str(BIN / "onnxport"), "inspect", "models/model.onnx"], project)
    assert "validation: passed (models/model.validation.json)" in inspected
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "export")
    assert ran_stages(dvc(project, "exp", "run", "-S", "export.opset=17")) == ["export"]
    assert opset_and_version(project / "models" / "model.onnx")[0] == 17

    # External weights: the stage's out is the model's directory, so the content-named data file is
    # tracked with the header, and a clone's `dvc pull` brings a model that loads.
    assert ran_stages(dvc(project, "exp", "run", "-S", "export.external_data=always")) == ["export"]
    data = [p.name for p in (project / "models").iterdir() if p.name.endswith(".data")]
    assert len(data) == 1, data
    git(project, "add", "-A")
    assert git(project, "status", "--porcelain", "--", "models") == ""  # DVC's, not git's
    dvc(project, "remote", "add", "--default", "store", str(tmp_path / "quick_remote"))
    git(project, "commit", "-q", "-am", "external weights")
    dvc(project, "push")
    clone = tmp_path / "quick_clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    dvc(clone, "pull")
    assert tree_bytes(clone / "models") == tree_bytes(project / "models")
    import onnxruntime as ort

    session = ort.InferenceSession(str(clone / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 10)

    # Static int8 calibrated on the template's own datamodule (`${data}`, composed by DVC's Hydra).
    int8 = (
        "{name: int8, precision: int8, quantization: static, calibration: {datamodule: ${data}, batches: 2}}"
    )
    assert ran_stages(dvc(project, "exp", "run", "-S", f"export.variants=[{int8}]")) == ["export"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert (
        params["export"]["variants"][0]["calibration"]["datamodule"]["_target_"] == params["data"]["_target_"]
    )
    assert (project / "models" / "model.int8.onnx").is_file()
    # A calibration source that does not build: exit code 2, one line naming it; nothing published.
    bad = (
        "{name: bad, precision: int8, quantization: static, calibration: {datamodule: {_target_: src.Nope}}}"
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    failed = subprocess.run(
        [
            str(BIN / "onnxport"),
            "export",
            "--config-dir",
            "configs",
            "--config-name",
            "onnx",
            f"export.variants=[{bad}]",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2, failed.stderr
    (error,) = [line for line in failed.stderr.splitlines() if "src.Nope" in line]
    assert error.startswith("onnxport: ") or "Error" in error
    assert not (project / "models" / "model.bad.onnx").exists()
