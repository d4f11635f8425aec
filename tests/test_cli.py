"""`onnxport export` / `validate` and the command dispatcher, on a tmp project with a real conf/.

Error cases run in-process through `main([...])`; the installed console script is run for the
real exports and once for the exit codes of a process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onnxport.cli import export_from_config, main
from onnxport.hydra_config import compose as compose_config

ONNXPORT = str(Path(sys.executable).with_name("onnxport"))

CONFIG = """\
defaults:
  - export: default
  - _self_
model:
  _target_: netdef.Net
  in_features: 4
  out_features: 3
checkpoint: weights.pt
output: models/model.onnx
"""

EXPORT = """\
defaults:
  - /onnxport/export_schema@_here_
  - _self_
opset: 18
inputs:
  - name: input
    shape: [2, 4]
validation:
  latency_runs: 0
"""


# The project's own model code, importable from the project root as in a DVC stage.
NETDEF = """\
import torch


class Net(torch.nn.Linear):
    pass


# Scales by the batch size, which TorchScript's tracer records as the constant 2.
class BatchBaked(torch.nn.Linear):
    def forward(self, input):
        return super().forward(input) * float(input.shape[0])


class KernelCrash(RuntimeError):
    pass  # an error type onnxport has never heard of


# Runs eagerly, then crashes inside the exporter (dynamo's capture and TorchScript's trace).
class CrashesOnExport(torch.nn.Linear):
    def forward(self, input):
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or torch.jit.is_tracing():
            raise KernelCrash("the fused kernel fell over\\n\\x1b[31mat line 3\\x1b[0m")
        return super().forward(input)
"""


def _write_project(root: Path) -> Path:
    (root / "conf" / "export").mkdir(parents=True)
    (root / "netdef.py").write_text(NETDEF)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    (root / "conf" / "export" / "default.yaml").write_text(EXPORT)
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 3).state_dict(), root / "weights.pt")  # same keys as netdef.Net
    return root


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "DVC_STAGE")}
    return subprocess.run(
        [ONNXPORT, *args], cwd=cwd, capture_output=True, text=True, env={**environment, **env}, timeout=300
    )


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def exported(project: Path) -> subprocess.CompletedProcess[str]:
    """One real `onnxport export --config-dir conf`, as the DVC stage runs it."""
    return run_cli("export", "--config-dir", "conf", cwd=project)


@pytest.mark.slow
def test_export_stage_writes_model_and_report_without_hydra_dirs(project, exported):
    assert exported.returncode == 0, exported.stderr
    assert (project / "models" / "model.onnx").is_file()
    report = json.loads((project / "models" / "model.validation.json").read_text())
    assert report["passed"] == 1
    assert "onnxport: wrote" in exported.stdout and "validation passed" in exported.stdout
    # A DVC stage must not leave Hydra's run directories or logs behind.
    assert not {"outputs", ".hydra", "multirun", "cli.log"} & {p.name for p in project.iterdir()}
    # stderr holds one line per finished phase, nothing else.
    assert "onnxport: load done in " in exported.stderr
    assert all(re.fullmatch(r"onnxport: \w+ done in [\d.]+ s", line) for line in exported.stderr.splitlines())


@pytest.mark.slow
def test_export_from_config_is_the_work_function(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    output = tmp_path / "direct.onnx"
    cfg = compose_config("conf", "config", [f"output={output}", "export.opset=17"])
    result = export_from_config(cfg)
    assert result.path == output and output.is_file()
    assert result.config.opset == 17
    assert result.validation is not None and result.validation.passed


def test_cfg_job_prints_the_composed_config_and_writes_nothing(project):
    before = listing(project)
    shown = run_cli("export", "--cfg", "job", "export.opset=17", cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert "opset: 17" in shown.stdout and "_target_: netdef.Net" in shown.stdout
    assert listing(project) == before


@pytest.mark.slow
def test_multirun_exports_one_file_per_opset(tmp_path):
    project = _write_project(tmp_path)
    swept = run_cli(
        "export", "-m", "export.opset=17,18", "output=models/model_${export.opset}.onnx", cwd=project
    )
    assert swept.returncode == 0, swept.stderr
    import onnx

    for opset in (17, 18):
        model = onnx.load(str(project / "models" / f"model_{opset}.onnx"))
        assert {o.domain: o.version for o in model.opset_import}[""] == opset


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run `main()` in-process from the project root, as the console script would."""
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return project


def _only_line(text: str) -> str:
    """The one error line of stderr (besides the `onnxport: <phase> done in X s` progress lines)."""
    assert "\x1b" not in text, text  # no ANSI escapes
    lines = [line for line in text.splitlines() if not re.fullmatch(r"onnxport: \w+ done in [\d.]+ s", line)]
    assert len(lines) == 1, text
    return lines[0]


BAD_INPUTS = {
    "missing checkpoint": (["checkpoint=missing.pt"], "missing.pt does not exist"),
    "checkpoint is a directory": (["checkpoint=conf"], "checkpoint conf is a directory"),
    "target does not import": (
        ["model._target_=nowhere.Net"],
        "model._target_='nowhere.Net' cannot be imported",
    ),
    "keys do not match": (
        [
            "model._target_=torch.nn.GRUCell",
            "~model.in_features",
            "~model.out_features",
            "+model.input_size=4",
            "+model.hidden_size=3",
        ],
        "4 missing (first: 'bias_hh'), 2 unexpected (first: 'bias')",
    ),
    "output under a file": (["output=weights.pt/model.onnx"], "output='weights.pt/model.onnx': its dir"),
    "output is a directory": (["output=conf"], "output='conf' is a directory"),
    "unknown key": (["export.opsett=17"], "unknown key export.opsett; did you mean export.opset?"),
    "unknown top-level key": (["trust_checkpont=true"], "did you mean trust_checkpoint?"),
    "opset not an int": (["export.opset=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
    "opset out of range": (["export.opset=99"], "export.opset=99 cannot be produced by the auto exporter"),
    "trust flag as a string": (["trust_checkpoint='false'"], "trust_checkpoint='false' has the wrong type"),
    "trust flag from an unset env var": (
        ["trust_checkpoint=${oc.env:ONNXPORT_TEST_UNSET,false}"],
        "has the wrong type (str); expected true or false",
    ),
    "output not a path": (["output=[a,b]"], "output=['a', 'b'] has the wrong type"),
}


@pytest.mark.parametrize("overrides, expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(in_project, capsys, overrides, expected):
    before = listing(in_project)
    assert main(["export", *overrides]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = _only_line(captured.err)
    assert error.startswith("onnxport export: error: ")
    assert expected in error
    assert listing(in_project) == before


def test_exit_codes_of_the_process(tmp_path):
    # One real process per status the shell sees; the causes are tested in-process.
    project = _write_project(tmp_path)
    assert run_cli("--help", cwd=project).returncode == 0
    bad = run_cli("export", "checkpoint=missing.pt", cwd=project)
    assert bad.returncode == 2 and bad.stderr.startswith("onnxport export: error: checkpoint missing.pt")
    assert run_cli("inspect", "netdef.py", cwd=project).returncode == 2


def test_a_crash_onnxport_does_not_recognise_exits_3_with_its_cause(in_project, capsys):
    # TorchScript's tracer lets the model's own error type through unwrapped (the dynamo exporter
    # wraps it in torch.onnx's error, which onnxport recognises: exit 2).
    args = ["model._target_=netdef.CrashesOnExport", "export.exporter=torchscript", "output=crash/model.onnx"]
    status = main(["export", *args])
    error = _only_line(capsys.readouterr().err)
    assert status == 3, error
    assert error.startswith("onnxport export: unexpected KernelCrash: the fused kernel fell over at line 3")
    assert not (in_project / "crash" / "model.onnx").exists()


def test_every_exit_code_is_documented_in_help_and_readme(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code in ("0 ok", "1 validation failed", "2 bad config or input", "3 unexpected internal error"):
        assert code in usage
    documented = (
        "`0` ok",
        "`1` validation failed",
        "`2` bad config or input",
        "`3` unexpected internal error",
    )
    for code in documented:
        assert code in readme


def test_export_help_lists_onnxports_keys_above_hydras(in_project, capsys):
    assert main(["export", "--help"]) == 0
    shown = capsys.readouterr().out
    keys = ("checkpoint", "output", "model", "trust_checkpoint", "export.opset", "export.validation.atol")
    for key in keys:
        assert f"\n  {key} (default " in shown, key
    assert "Allow full unpickling" in shown and "ONNX opset to produce" in shown
    assert "3 unexpected internal error" in shown
    assert shown.index("export.opset") < shown.index("Powered by Hydra")


def test_a_fix_printed_by_the_cli_uses_cli_syntax():
    from onnxport.cli import cli_syntax

    assert cli_syntax("pass trust_checkpoint=True if trusted") == "pass trust_checkpoint=true if trusted"
    assert cli_syntax('pass model_class="pkg.Lit"') == "pass model=pkg.Lit"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("opsett: 18", "Key 'opsett' not in 'ExportConfig'"),
        ("opset: abc", "could not be converted to Integer"),
    ],
    ids=["unknown key", "wrong type"],
)
def test_conf_export_typos_fail_at_composition(tmp_path, line, expected):
    # `--cfg job` only composes: the ConfigStore schema, not ExportConfig.from_dict, rejects these.
    project = _write_project(tmp_path)
    export = project / "conf" / "export" / "default.yaml"
    export.write_text(export.read_text().replace("opset: 18", line))
    failed = run_cli("export", "--cfg", "job", cwd=project)
    assert failed.returncode == 2, failed.stderr
    assert failed.stdout == ""
    assert len(failed.stderr.splitlines()) == 1, failed.stderr
    assert "while composing config" in failed.stderr and expected in failed.stderr


def test_validation_failure_exits_1_and_publishes_nothing(in_project, capsys):
    status = main(
        ["export", "model._target_=netdef.BatchBaked", "export.exporter=torchscript", "output=bad/m.onnx"]
    )
    captured = capsys.readouterr()
    assert status == 1, captured.err
    assert captured.out == ""
    # The parity table is logged first; the error itself is the last line, and one line.
    assert "batch=5" in captured.err
    assert captured.err.splitlines()[-1].startswith("onnxport export: error: 2 of 3 validation cases failed")
    assert sorted(p.name for p in (in_project / "bad").iterdir()) == [
        "m.rejected.onnx",
        "m.rejected.validation.json",
    ]


def test_hydra_full_error_shows_the_traceback(project):
    failed = run_cli("export", "export.opset=abc", cwd=project, HYDRA_FULL_ERROR="1")
    assert failed.returncode != 0
    assert "Traceback" in failed.stderr


@pytest.mark.slow
def test_validate_rechecks_a_file_and_writes_the_report_beside_it(project, exported, monkeypatch, capsys):
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    beside = project / "models" / "model.revalidation.json"
    exported_report = (project / "models" / "model.validation.json").read_bytes()
    # The configured export report is the export stage's DVC metric: re-validating leaves it alone,
    # and so does the default (issue 11: validate writes its own report name).
    args = ["validate", "models/model.onnx", "--checkpoint", "weights.pt", "export.validation.report=m.json"]
    assert main(args) == 0
    assert "validation passed" in capsys.readouterr().out
    assert json.loads(beside.read_text())["passed"] == 1
    assert not (project / "m.json").exists()
    assert (project / "models" / "model.validation.json").read_bytes() == exported_report


@pytest.mark.slow
def test_validate_against_other_weights_fails_with_exit_1(
    project, exported, tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    torch.manual_seed(123)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), other)
    report = tmp_path / "reports" / "report.json"  # a directory that does not exist yet
    status = main(["validate", "models/model.onnx", "--checkpoint", str(other), "--report", str(report)])
    assert status == 1
    captured = capsys.readouterr()
    # The table of failed cases goes to the log (stderr), once; the error is the last, single line.
    assert "validation FAILED" in caplog.text and "validation FAILED" not in captured.out
    assert captured.err.count("validation FAILED") == 1
    assert captured.err.splitlines()[-1].startswith("onnxport validate: error: ")
    assert json.loads(report.read_text())["passed"] == 0


def test_unknown_command_and_no_command_exit_2(capsys):
    assert main(["exprot"]) == 2
    assert "unknown command 'exprot'" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "onnxport inspect FILE" in capsys.readouterr().out


def test_export_without_a_config_dir_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("onnxport export: error: no --config-dir given") and len(error.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# -- a lightning-hydra-template layout ------------------------------------------------------

# The template's own files where onnxport meets them (configs/train.yaml, paths/, hydra/, the
# model node with a nested net and _partial_ optimizer and scheduler), verbatim but for names.
TEMPLATE = {
    ".project-root": "",
    "configs/train.yaml": """\
# @package _global_
defaults:
  - _self_
  - data: digits
  - model: dense
  - callbacks: default
  - logger: null
  - trainer: default
  - paths: default
  - extras: default
  - hydra: default
  - experiment: null
  - hparams_search: null
  - optional local: default
  - debug: null
task_name: "train"
tags: ["dev"]
train: True
test: True
ckpt_path: null
seed: null
""",
    "configs/paths/default.yaml": """\
root_dir: ${oc.env:PROJECT_ROOT}
data_dir: ${paths.root_dir}/data/
log_dir: ${paths.root_dir}/logs/
output_dir: ${hydra:runtime.output_dir}
work_dir: ${hydra:runtime.cwd}
""",
    "configs/hydra/default.yaml": """\
defaults:
  - override hydra_logging: colorlog
  - override job_logging: colorlog
run:
  dir: ${paths.log_dir}/${task_name}/runs/${now:%Y-%m-%d}_${now:%H-%M-%S}
sweep:
  dir: ${paths.log_dir}/${task_name}/multiruns/${now:%Y-%m-%d}_${now:%H-%M-%S}
  subdir: ${hydra.job.num}
job_logging:
  handlers:
    file:
      filename: ${hydra.runtime.output_dir}/${task_name}.log
""",
    "configs/model/dense.yaml": """\
_target_: tplmodels.LitDense
optimizer:
  _target_: torch.optim.Adam
  _partial_: true
  lr: 0.001
scheduler:
  _target_: torch.optim.lr_scheduler.ReduceLROnPlateau
  _partial_: true
  mode: min
net:
  _target_: tplmodels.DenseNet
  input_size: 8
  output_size: 3
compile: false
""",
    "configs/data/digits.yaml": "_target_: tplmodels.Digits\ndata_dir: ${paths.data_dir}\nbatch_size: 16\n",
    "configs/callbacks/default.yaml": """\
defaults:
  - model_checkpoint
  - _self_
model_checkpoint:
  dirpath: ${paths.output_dir}/checkpoints
  filename: "epoch_{epoch:03d}"
  monitor: "val/acc"
  mode: "max"
  save_last: True
""",
    "configs/callbacks/model_checkpoint.yaml": """\
model_checkpoint:
  _target_: lightning.pytorch.callbacks.ModelCheckpoint
  dirpath: null
  filename: null
  monitor: null
  save_last: null
  mode: "min"
""",
    "configs/trainer/default.yaml": "_target_: lightning.pytorch.trainer.Trainer\n"
    "default_root_dir: ${paths.output_dir}\nmax_epochs: 10\naccelerator: cpu\n",
    "configs/extras/default.yaml": "ignore_warnings: False\nenforce_tags: True\nprint_config: True\n",
    "tplmodels.py": """\
import torch


class DenseNet(torch.nn.Module):
    def __init__(self, input_size, output_size):
        super().__init__()
        layers = [torch.nn.Linear(input_size, 16), torch.nn.ReLU(), torch.nn.Linear(16, output_size)]
        self.model = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class LitDense(torch.nn.Module):  # the template's MNISTLitModule, minus Lightning
    def __init__(self, net, optimizer, scheduler, compile):
        super().__init__()
        self.net, self.optimizer, self.scheduler = net, optimizer, scheduler

    def forward(self, x):
        return self.net(x)
""",
}

# What onnxport reads, as command-line overrides on the template's own train.yaml.
TEMPLATE_KEYS = ["checkpoint=weights.pt", "output=models/model.onnx", "export.inputs=[{name:x,shape:[2,8]}]"]


@pytest.fixture
def template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in TEMPLATE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("PROJECT_ROOT", "HYDRA_FULL_ERROR", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    import importlib

    import tplmodels  # type: ignore[import-not-found]

    importlib.reload(tplmodels)
    torch.manual_seed(0)
    net = tplmodels.DenseNet(8, 3)
    model = tplmodels.LitDense(net, None, None, False)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    return tmp_path


def test_the_templates_own_configs_compose_without_train_py(template, capsys):
    # No PROJECT_ROOT, no colorlog handler, ${hydra:...} in paths: the first error is onnxport's own.
    before = listing(template)
    status = main(["export", "--config-dir", "configs", "--config-name", "train", "checkpoint=missing.ckpt"])
    error = _only_line(capsys.readouterr().err)
    assert status == 2, error
    assert "checkpoint missing.ckpt does not exist" in error
    assert listing(template) == before  # no logs/train/runs/<timestamp>/, no .hydra/, no log file


def test_an_interpolation_only_a_training_run_resolves_is_named_with_its_fix(template, capsys):
    args = ["validate", "weights.pt", "--config-dir", "configs", "--config-name", "train"]
    assert main([*args, "checkpoint=${paths.output_dir}/checkpoints/last.ckpt"]) == 2
    error = _only_line(capsys.readouterr().err)
    assert "paths.output_dir cannot be resolved" in error or "checkpoint cannot be resolved" in error
    assert "Fix: set" in error and "plain path" in error


@pytest.mark.slow
def test_export_and_validate_run_on_the_templates_configs(template, capsys):
    before = listing(template)
    args = ["--config-dir", "configs", "--config-name", "train", *TEMPLATE_KEYS]
    assert main(["export", *args]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "validation passed" in captured.out
    phases = [line.split()[1] for line in captured.err.splitlines()]
    assert phases[0] == "load"
    assert listing(template) - before == {"models", "models/model.onnx", "models/model.validation.json"}
    assert main(["validate", "models/model.onnx", *args]) == 0, capsys.readouterr().err
    assert not (template / "logs").exists()


# -- untrusted checkpoints ---------------------------------------------------------------------


class Payload:
    """Unpickling this runs ``touch <marker>`` (pickling only records the call)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def payload_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Lightning-style checkpoint whose unpickling would create a marker file."""
    folder = tmp_path_factory.mktemp("payload")
    marker, checkpoint = folder / "payload-ran", folder / "payload.ckpt"
    torch.save(
        {"state_dict": torch.nn.Linear(4, 3).state_dict(), "hyper_parameters": Payload(marker)}, checkpoint
    )
    assert not marker.exists()
    return checkpoint, marker


@pytest.mark.parametrize(
    "flag",
    [
        None,
        "trust_checkpoint=false",
        "trust_checkpoint='false'",
        "trust_checkpoint='0'",
        "trust_checkpoint=0",
    ],
    ids=["no flag", "false", "string false", "string 0", "integer 0"],
)
def test_a_payload_never_runs_through_export_or_validate(payload_checkpoint, in_project, capsys, flag):
    checkpoint, marker = payload_checkpoint
    flags = [flag] if flag else []
    assert main(["export", f"checkpoint={checkpoint}", *flags]) == 2
    assert main(["validate", "netdef.py", f"--checkpoint={checkpoint}", *flags]) == 2
    for error in capsys.readouterr().err.splitlines():
        assert error.startswith("onnxport ") and "\x1b" not in error
    assert not marker.exists()


def test_the_payload_is_real_when_trusted(payload_checkpoint, in_project, capsys):
    # The control: with trust_checkpoint=true (a real bool) full unpickling runs it.
    checkpoint, marker = payload_checkpoint
    # (the model then fails to build, which ends the run right after unpickling)
    main(["export", f"checkpoint={checkpoint}", "trust_checkpoint=true", "~model.in_features"])
    assert marker.exists()
    marker.unlink()


# A fresh interpreter: main() in-process, then whether torch was imported on the way to the error.
FAIL_FAST = """\
import sys
from onnxport.cli import main
status = main(["export", *sys.argv[1:]])
print(status, "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "override, expected",
    [("checkpoint=missing.ckpt", "missing.ckpt does not exist"), ("export.opset=99", "export.opset=99")],
)
def test_bad_config_fails_before_torch_is_imported(project, override, expected):
    done = subprocess.run(
        [sys.executable, "-c", FAIL_FAST, override], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert expected in done.stderr


# The template project exported by `dvc exp run` with the README's quick start:
# tests/test_dvc_pipeline.py::test_quick_start_adds_the_stage_to_an_existing_project.


def test_own_keys_need_no_plus_but_group_choices_stay_choices(tmp_path):
    from onnxport.hydra_config import own_key_overrides

    (tmp_path / "model").mkdir()
    given = ["model=digits", "trust_checkpoint=true", "export.opset=17", "+x=1", "trainer.max_epochs=1"]
    assert own_key_overrides(given, tmp_path) == [
        "model=digits",  # a config group in the config dir: a choice, not a value
        "++trust_checkpoint=true",
        "++export.opset=17",
        "+x=1",
        "trainer.max_epochs=1",
    ]


def test_a_checkpoint_that_needs_trust_names_the_cli_key(in_project, tmp_path, capsys):
    pickled = tmp_path / "whole-module.pt"
    torch.save(torch.nn.Linear(4, 3), pickled)  # the module object itself: only full unpickling reads it
    assert main(["export", f"checkpoint={pickled}", "~model"]) == 2
    error = _only_line(capsys.readouterr().err)
    assert "trust_checkpoint" in error and "=True" not in error, error


def test_the_reference_conf_composes_with_the_packaged_callback_and_no_warning(monkeypatch, capsys):
    import warnings

    from conftest import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Hydra's "validated against ConfigStore schema" warning
        assert main(["export", "--cfg", "job"]) == 0
    shown = capsys.readouterr().out
    assert "_target_: onnxport.OnnxExportCallback" in shown and "config: ${export}" in shown
