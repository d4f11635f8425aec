"""Issue 11's fault and attack findings, one case per finding (the ones the library owns).

Every failure case checks the same promise: the output directory holds the previous model, its
data file and its report byte-for-byte, plus at most the ``.rejected`` evidence. Kills are
injected at each publish step through the ``ONNXPORT_TEST_KILL_AT`` hook in a real subprocess;
a full disk is a real tmpfs; the race is two real exports to one path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnxport
from conftest import REPO_ROOT, TinyMLP, run_onnx
from onnxport import publish
from onnxport.errors import ConfigError, InputError, NonFiniteError, PublishError
from onnxport.hashing import artifact_sha256
from onnxport.inspection import format_report, inspect_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:The feature will be removed"),
]

# A subprocess export of TinyMLP(seed) to argv[1], weights external; the hook env var picks the fault.
EXPORT_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    import torch, onnxport
    from conftest import TinyMLP
    torch.manual_seed(int(sys.argv[2]))
    model = TinyMLP().eval()
    onnxport.export(model, torch.randn(2, 4), sys.argv[1], exporter="torchscript",
                    external_data="always", validation={"latency_runs": 0})
    """
)


def export_mlp(output: Path, seed: int, **options) -> onnxport.ExportResult:
    torch.manual_seed(seed)
    settings = {"exporter": "torchscript", "external_data": "always", "validation": {"latency_runs": 0}}
    return onnxport.export(TinyMLP().eval(), torch.randn(2, 4), output, **{**settings, **options})


def spawn(output: Path, seed: int, fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != publish.FAULT_ENV}
    if fault:
        env[publish.FAULT_ENV] = fault
    script = [sys.executable, "-c", EXPORT_SCRIPT, str(output), str(seed), str(REPO_ROOT / "tests")]
    return subprocess.Popen(script, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every visible file and its bytes (staging folders and temporary reports are hidden)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".") and p.is_file()}


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous good export: model, content-named data file and report."""
    directory = tmp_path_factory.mktemp("previous")
    export_mlp(directory / "model.onnx", seed=0)
    return directory


@pytest.fixture
def out(previous: Path, tmp_path: Path) -> Path:
    """A fresh copy of the previous export; returns its model path."""
    directory = tmp_path / "out"
    shutil.copytree(previous, directory)
    return directory / "model.onnx"


def assert_previous_intact(output: Path, previous: Path, *, evidence: bool = False) -> None:
    now = snapshot(output.parent)
    before = snapshot(previous)
    if evidence:  # a failed validation may leave its .rejected files, nothing else
        now = {name: data for name, data in now.items() if ".rejected." not in name}
    assert now == before


# -- 2 and 5: the report path is refused before anything is exported ---------------------------


@pytest.mark.parametrize(
    "report",
    ["model.onnx", "DATA", "model.rejected.onnx", "model.rejected.validation.json", "weights.pt", "a_dir"],
    ids=["output", "data file", "rejected", "rejected report", "checkpoint", "directory"],
)
def test_2_5_a_report_path_that_would_destroy_something_is_refused_first(out, previous, report):
    torch.save(TinyMLP().state_dict(), out.parent / "weights.pt")
    (out.parent / "a_dir").mkdir()
    before = {**snapshot(previous), "weights.pt": (out.parent / "weights.pt").read_bytes()}
    if report == "DATA":
        report = publish.data_files(out)[0].name
    with pytest.raises(InputError) as error:
        export_mlp(out, seed=1, validation={"report": str(out.parent / report)})
    assert error.value.exit_code == 2 and "\n" not in str(error.value)
    assert snapshot(out.parent) == before
    assert hidden(out.parent) == []


@pytest.mark.parametrize("key", ["metrics", "plots"])
def test_2_the_dvc_metrics_and_plots_paths_are_refused_first_too(out, previous, key):
    torch.save(TinyMLP().state_dict(), out.parent / "weights.pt")
    before = snapshot(out.parent)
    target = {"metrics": out, "plots": out.parent / "weights.pt"}[key]
    if key == "plots":  # a plots folder whose parity.json is a checkpoint
        (out.parent / "plots").mkdir()
        shutil.copy2(target, out.parent / "plots" / "parity.json")
        target = out.parent / "plots"
    with pytest.raises(InputError, match=f"export.validation.{key}=") as error:
        export_mlp(out, seed=1, validation={key: str(target)})
    assert error.value.exit_code == 2
    assert snapshot(out.parent) == before


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_5_non_finite_tolerances_are_refused_before_exporting(out, previous, value):
    with pytest.raises(ConfigError, match="is not a finite number"):
        export_mlp(out, seed=1, validation={"atol": value})
    assert_previous_intact(out, previous)


def test_5_a_planted_symlink_at_the_report_path_is_replaced_never_followed(out, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    report = out.with_name("model.validation.json")
    report.unlink()
    report.symlink_to(victim)
    result = export_mlp(out, seed=1)
    assert victim.read_text() == "not yours"
    assert not report.is_symlink() and json.loads(report.read_text())["run"]["onnx_sha256"] == result.sha256


# -- 4: one commit point; the hash covers header and data -------------------------------------


def test_4_weights_change_the_data_file_name_and_the_hash(out, previous):
    old_data = publish.data_files(out)[0]
    result = export_mlp(out, seed=1)
    (new_data,) = publish.data_files(out)
    assert new_data.name != old_data.name and not old_data.exists()  # removed after the switch
    assert result.data_path == new_data
    assert result.sha256 == artifact_sha256(out, [new_data]) != artifact_sha256(out)
    assert sorted(snapshot(out.parent)) == sorted(["model.onnx", "model.validation.json", new_data.name])
    report = json.loads(out.with_name("model.validation.json").read_text())
    assert report["run"]["onnx_sha256"] == result.sha256 == inspect_model_sha(out)


def inspect_model_sha(path: Path) -> str:
    info = inspect_model(path)
    assert info["validation"] is not None  # shown only when the hash of header + data matches
    return json.loads(path.with_name("model.validation.json").read_text())["run"]["onnx_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("step", ["staged", "validated", "report_staged", "data_placed"])
def test_4_7_a_kill_before_the_commit_point_leaves_the_previous_model(out, previous, step):
    done = spawn(out, seed=1, fault=step)
    done.communicate(timeout=300)
    assert done.returncode == -signal.SIGKILL
    now = snapshot(out.parent)
    extra = set(now) - set(snapshot(previous))
    if step == "data_placed":  # the new data file is beside the old model, referenced by nothing
        assert len(extra) == 1 and publish._DATA_NAME.search(extra.pop())
    else:
        assert extra == set()
    assert {name: now[name] for name in snapshot(previous)} == snapshot(previous)
    assert hidden(out.parent)  # SIGKILL skipped the cleanup: the staging folder is still there
    # 7: the next export sweeps what the dead process left
    swept = publish.sweep(out)
    assert swept and hidden(out.parent) == []
    assert snapshot(out.parent) == snapshot(previous)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["committed", "report_replaced"])
def test_4_a_kill_after_the_commit_point_leaves_the_new_model_whole(out, previous, step):
    done = spawn(out, seed=1, fault=step)
    done.communicate(timeout=300)
    assert done.returncode == -signal.SIGKILL
    (data,) = publish.data_files(out)
    assert data.name not in snapshot(previous)  # the new header, with the new data beside it
    onnx.checker.check_model(str(out), full_check=True)
    x = np.ones((3, 4), np.float32)
    torch.manual_seed(1)
    np.testing.assert_allclose(
        run_onnx(out, {"x": x})[0], TinyMLP().eval()(torch.from_numpy(x)).detach(), atol=1e-5
    )
    report = json.loads(out.with_name("model.validation.json").read_text())
    if step == "committed":  # the previous report, which names the previous bytes: inspect ignores it
        assert (
            out.with_name("model.validation.json").read_bytes() == snapshot(previous)["model.validation.json"]
        )
        assert inspect_model(out)["validation"] is None
    else:
        assert report["run"]["onnx_sha256"] == artifact_sha256(out, [data])
    publish.sweep(out)
    assert hidden(out.parent) == [] and len(list(out.parent.glob("model.onnx.*.data"))) == 1


@pytest.mark.slow
def test_7_sigterm_runs_the_same_cleanup_as_an_exception(out, previous):
    done = spawn(out, seed=1, fault="staged:TERM")
    done.communicate(timeout=300)
    assert done.returncode == 128 + signal.SIGTERM
    assert hidden(out.parent) == []
    assert_previous_intact(out, previous)


def test_7_a_staging_folder_of_a_live_process_is_not_swept(out):
    live = out.parent / f".model.onnx.pid{os.getppid()}.abcdefgh.tmp"
    dead = out.parent / ".model.onnx.pid999999999.abcdefgh.tmp"
    live.mkdir()
    dead.mkdir()
    publish.sweep(out)
    assert live.is_dir() and not dead.exists()


# -- 5: a full disk -----------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    """Write until the filesystem is full (unbuffered: nothing is left to flush)."""
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def test_5_a_full_disk_is_a_one_line_error_and_the_previous_model_stays(previous, tmp_path):
    with tmpfs(tmp_path / "disk", "2m") as disk:
        output = disk / "model.onnx"
        for item in previous.iterdir():
            shutil.copy2(item, disk / item.name)
        fill(disk)
        before = snapshot(disk)
        with pytest.raises((PublishError, InputError)) as error:
            export_mlp(output, seed=1)
        assert error.value.exit_code == 2 and "No space left" in str(error.value)
        assert snapshot(disk) == before and hidden(disk) == []


def test_5_a_full_disk_under_the_report_fails_before_the_model_is_replaced(out, previous, tmp_path):
    with tmpfs(tmp_path / "metrics", "64k") as metrics:
        fill(metrics)
        with pytest.raises(InputError, match="No space left") as error:
            export_mlp(out, seed=1, validation={"report": str(metrics / "validation.json")})
        assert error.value.exit_code == 2
        assert_previous_intact(out, previous)
        assert hidden(out.parent) == [] and hidden(metrics) == []


# -- 6: inspect does not trust the file ---------------------------------------------------------


def crafted(path: Path, metadata: dict[str, str]) -> Path:
    """A tiny valid ONNX file with ``metadata`` (and a bad dtype, a bad length, an odd location)."""
    x = onnx.helper.make_tensor_value_info("x\x1b[31m", onnx.TensorProto.FLOAT, ["batch\x07", 4])
    y = onnx.helper.make_tensor_value_info("y", 999, None)
    weird = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [1.0])
    weird.data_location = onnx.TensorProto.EXTERNAL
    weird.ClearField("float_data")
    for key, value in (("location", "/dev/zero"), ("length", "lots")):
        weird.external_data.add(key=key, value=value)
    node = onnx.helper.make_node("Identity", ["x\x1b[31m"], ["y"])
    graph = onnx.helper.make_graph([node], "g\x1b]0;title\x07", [x], [y], initializer=[weird])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return path


def inspect_in_subprocess(path: Path) -> subprocess.CompletedProcess[str]:
    """`onnxport inspect`, bounded in time: a FIFO or /dev/zero must not hang it."""
    code = f"import sys; from onnxport.cli import main; sys.exit(main(['inspect', {str(path)!r}]))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/etc/passwd", "../outside.validation.json"])
def test_6_inspect_reads_no_report_the_file_names_outside_its_directory_or_not_a_file(tmp_path, target):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (tmp_path / "outside.validation.json").write_text(json.dumps({"passed": 1, "run": {}}))
    if target == "fifo":
        target = str(model_dir / "model.validation.json")
        os.mkfifo(target)
    config = json.dumps({"validation": {"report": target}})
    path = crafted(model_dir / "model.onnx", {"onnxport.config": config})
    done = inspect_in_subprocess(path)
    assert done.returncode == 0, done.stderr
    assert "validation: no report" in done.stdout


def test_6_inspect_escapes_control_characters_and_truncates_long_values(tmp_path):
    fake = "\x1b[2J\x1b[H\x1b]0;pwned\x07validation: passed"
    metadata = {"onnxport.user.note": fake, "onnxport.config": "[" * 100_000, "long": "x" * 10_000}
    done = inspect_in_subprocess(crafted(tmp_path / "model.onnx", metadata))
    assert done.returncode == 0, done.stderr
    assert not any(ch in done.stdout for ch in "\x1b\x07")
    assert "\\x1b[2J" in done.stdout and "\\x07" in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) < 400
    verdicts = [line for line in done.stdout.splitlines() if line.startswith("validation:")]
    assert verdicts == ["validation: no report"]  # the fake verdict stays inside its escaped value
    info = inspect_model(tmp_path / "model.onnx")  # the JSON form keeps the data; json.dumps escapes it
    assert info["outputs"][0]["dtype"] == "type 999" and "\x1b" not in json.dumps(info)


# -- 9: non-finite reference outputs -------------------------------------------------------------


class AllInf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("inf") + float("inf")


def test_9_all_inf_outputs_fail_validation_unless_allowed(out, previous):
    with pytest.raises(NonFiniteError, match="allow_nonfinite"):
        onnxport.export(
            AllInf(), torch.rand(2, 4) + 1, out, exporter="torchscript", validation={"latency_runs": 0}
        )
    assert_previous_intact(out, previous, evidence=True)
    allowed = {"latency_runs": 0, "per_output": {"output": {"allow_nonfinite": True}}}
    result = onnxport.export(AllInf(), torch.rand(2, 4) + 1, out, exporter="torchscript", validation=allowed)
    assert result.validation.passed


# -- 10: reports that vouch for the wrong file ---------------------------------------------------


def test_10_disabled_validation_replaces_a_passed_report_and_metrics(out):
    report, metrics = out.with_name("model.validation.json"), out.with_name("metrics.json")
    export_mlp(out, seed=0, validation={"metrics": str(metrics)})
    assert json.loads(report.read_text())["passed"] == 1 and json.loads(metrics.read_text())["passed"] == 1
    result = export_mlp(out, seed=1, validation={"enabled": False, "metrics": str(metrics)})
    data = json.loads(report.read_text())
    assert data["passed"] == 0 and data["validated"] == 0 and data["run"]["onnx_sha256"] == result.sha256
    assert json.loads(metrics.read_text()) == {"passed": 0, "validated": 0}
    assert "not validated" in format_report(inspect_model(out))


@pytest.mark.slow
def test_10_a_forced_race_never_leaves_a_report_vouching_for_the_other_file(out):
    # A stops right after its commit point; B exports to the same path; then A finishes.
    first = spawn(out, seed=1, fault="committed:STOP")
    deadline = time.monotonic() + 300
    while _state(first.pid) != "T":
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    second = export_mlp(out, seed=2)
    os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=300)
    assert first.returncode == 0
    report = json.loads(out.with_name("model.validation.json").read_text())
    published = artifact_sha256(out, publish.data_files(out))
    assert published == second.sha256  # B's file ...
    assert report["run"]["onnx_sha256"] != published  # ... with A's report, which names A's bytes
    assert inspect_model(out)["validation"] is None  # so inspect shows no report for B's file


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "?"


# -- 11: messages ---------------------------------------------------------------------------------


def test_11_a_list_as_output_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match=r"output=\['a.onnx', 'b.onnx'\] is not a path"):
        onnxport.export(TinyMLP(), torch.randn(2, 4), ["a.onnx", "b.onnx"])


def test_11_validate_on_a_file_that_is_not_onnx_is_bad_input(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(InputError, match="is not an ONNX model") as error:
        onnxport.validate(bogus, TinyMLP().eval(), torch.randn(2, 4))
    assert error.value.exit_code == 2


def test_11_bf16_on_cpu_names_the_missing_kernel(tmp_path):
    model = TinyMLP().eval().to(torch.bfloat16)
    with pytest.raises(onnxport.ValidationError, match="no bf16 kernel in ORT's CPU provider") as error:
        onnxport.export(
            model, torch.randn(2, 4, dtype=torch.bfloat16), tmp_path / "m.onnx", exporter="torchscript"
        )
    assert "float32" in error.value.fix


@pytest.mark.slow
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_11_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        "model:\n  _target_: torch.nn.Linear\n  in_features: 4\n  out_features: 3\n"
        "checkpoint: weights.pt\noutput: model.onnx\n"
        "export:\n  exporter: torchscript\n  inputs: [{name: input, shape: [2, 4]}]\n"
    )
    torch.save(nn.Linear(4, 3).state_dict(), tmp_path / "weights.pt")
    env = {
        **{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
        publish.FAULT_ENV: "staged:INT",
    }
    onnxport_bin = str(Path(sys.executable).with_name("onnxport"))
    done = subprocess.run(
        [onnxport_bin, "export", "--config-dir", "conf"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        # Ctrl-C as a shell delivers it: a child inherits an ignored SIGINT, and something in this
        # test process (Lightning ignores it while tearing down a process group) may have left it so.
        preexec_fn=_default_sigint,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "onnxport export: interrupted"
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "weights.pt"]


def test_6_fields_that_are_not_utf8_are_shown_escaped(tmp_path):
    # protobuf hands back bytes for a string field that is not UTF-8: inspect must not trip on it
    # (found by mutating an exported header at random: 4000 mutants, no crash but InputError)
    path = crafted(tmp_path / "model.onnx", {"onnxport.user.MARKKEY": "MARKVALUE"})
    path.write_bytes(
        path.read_bytes()
        .replace(b"MARKKEY", b"\xffARKKEY")
        .replace(b"MARKVALUE", b"\xc3(RKVALUE")  # same lengths
    )
    info = inspect_model(path)
    json.dumps(info)
    text = format_report(info)
    assert "\\xff" in text and "\\xc3(" in text
