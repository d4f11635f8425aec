"""resolve_stage_config: one source of truth for `dvc repro` and `dvc exp run -S`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from onnxport.stage import refresh_params, resolve_stage_config

DVC = str(Path(sys.executable).with_name("dvc"))

CONFIG = """\
defaults:
  - export: default
  - _self_
value: 1
"""

EXPORT = """\
defaults:
  - /onnxport/export_schema@_here_
  - _self_
opset: 17
"""

# A Hydra app as a stage command: writes what it resolved, so the test can read it back.
SHOW = """\
import hydra
from onnxport.stage import resolve_stage_config

@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg):
    cfg = resolve_stage_config(cfg)
    with open("out.txt", "w") as handle:
        handle.write(f"{cfg.value} {cfg.export.opset}\\n")

main()
"""


def _write_conf(root: Path, *, hydra_enabled: bool = True) -> None:
    (root / "conf" / "export").mkdir(parents=True)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    (root / "conf" / "export" / "default.yaml").write_text(EXPORT)
    (root / ".dvc").mkdir(exist_ok=True)
    if hydra_enabled:
        (root / ".dvc" / "config").write_text("[hydra]\n    enabled = true\n")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("DVC_STAGE", "DVC_EXP_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_outside_dvc_the_config_is_unchanged(clean_env):
    cfg = OmegaConf.create({"value": 1})
    assert resolve_stage_config(cfg) is cfg


def test_exp_run_takes_the_params_dvc_composed(tmp_path, clean_env):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text("value: 5\nexport: {opset: 19}\n")
    clean_env.chdir(tmp_path)
    clean_env.setenv("DVC_STAGE", "show")
    clean_env.setenv("DVC_EXP_NAME", "exp-1")
    resolved = resolve_stage_config(OmegaConf.create({"value": 1, "keep": 2, "export": {"opset": 17}}))
    assert OmegaConf.to_container(resolved) == {"value": 5, "keep": 2, "export": {"opset": 19}}


def test_repro_refreshes_params_only_when_the_composition_differs(tmp_path, clean_env):
    _write_conf(tmp_path)
    assert refresh_params(tmp_path) is True
    params = OmegaConf.load(tmp_path / "params.yaml")
    assert params.value == 1 and params.export.opset == 17 and params.export.exporter == "auto"
    mtime = (tmp_path / "params.yaml").stat().st_mtime_ns
    assert refresh_params(tmp_path) is False
    assert (tmp_path / "params.yaml").stat().st_mtime_ns == mtime


def test_params_are_left_alone_without_dvc_hydra_composition(tmp_path, clean_env):
    _write_conf(tmp_path, hydra_enabled=False)
    assert refresh_params(tmp_path) is False
    assert not (tmp_path / "params.yaml").exists()


@pytest.mark.slow
def test_repro_sees_conf_edits_and_exp_run_sees_set_param(git_repo):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(args, cwd=git_repo, env=env, capture_output=True, text=True, timeout=300)
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done

    def out() -> str:
        return (git_repo / "out.txt").read_text().strip()

    run(DVC, "init", "-q")
    _write_conf(git_repo)
    (git_repo / "show.py").write_text(SHOW)
    hydra_quiet = "hydra.run.dir=. hydra.output_subdir=null hydra/job_logging=none hydra/hydra_logging=none"
    (git_repo / "dvc.yaml").write_text(
        "stages:\n  show:\n"
        f"    cmd: {sys.executable} show.py {hydra_quiet}\n"
        "    deps: [show.py, conf]\n"
        "    params: [value, export.opset]\n"
        "    outs: [{out.txt: {cache: false}}]\n"
    )
    refresh_params(git_repo)  # the committed params.yaml, as a project would have it
    (git_repo / ".gitignore").write_text("out.txt\n")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "stage")

    # Plain `dvc repro` never composes params.yaml: the stage must still see the edit to conf/.
    config = git_repo / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("value: 1", "value: 2"))
    run(DVC, "repro")
    assert out() == "2 17"
    assert OmegaConf.load(git_repo / "params.yaml").value == 2  # so dvc.lock records what ran
    assert "value: 2" in (git_repo / "dvc.lock").read_text()
    assert "didn't change" in run(DVC, "repro").stdout

    run("git", "add", "-A")
    run("git", "commit", "-qm", "value 2")
    run(DVC, "exp", "run", "-S", "value=5", "-S", "export.opset=19")
    assert out() == "5 19"

    # The ExportConfig schema reaches DVC's own composition through the hydra_plugins package.
    # (Without it, DVC would write opset: abc into params.yaml and the stage would fail later.)
    wrong = run(DVC, "exp", "run", "-S", "export.opset=abc", check=False)
    assert wrong.returncode != 0
    assert "object_type=ExportConfig" in wrong.stdout + wrong.stderr


def test_exp_run_applies_command_line_overrides_once(tmp_path, clean_env):
    # `+key=value` on the stage's command line: the composed cfg has it, params.yaml does not.
    from onnxport.hydra_config import compose

    _write_conf(tmp_path)
    (tmp_path / "params.yaml").write_text("value: 5\nexport: {opset: 19}\n")
    clean_env.chdir(tmp_path)
    clean_env.setenv("DVC_STAGE", "show")
    clean_env.setenv("DVC_EXP_NAME", "exp-1")
    overrides = ["+extra=3", "value=7"]
    cfg = compose(tmp_path / "conf", "config", overrides)
    resolved = resolve_stage_config(cfg, overrides)
    assert (resolved.extra, resolved.value, resolved.export.opset) == (3, 7, 19)


def test_refresh_params_names_the_key_dvc_cannot_resolve(tmp_path, clean_env):
    from onnxport.errors import ConfigError

    _write_conf(tmp_path)
    config = tmp_path / "conf" / "config.yaml"
    config.write_text(config.read_text() + "paths:\n  output_dir: ${hydra:runtime.output_dir}\n")
    with pytest.raises(ConfigError) as caught:
        refresh_params(tmp_path)
    message = str(caught.value)
    assert "DVC's Hydra composition" in message and "paths.output_dir cannot be resolved" in message
    assert "Fix: set paths.output_dir to a plain path" in message and "\n" not in message
    assert not (tmp_path / "params.yaml").exists()
