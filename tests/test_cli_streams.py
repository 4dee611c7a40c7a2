"""The CLI as users script it: results on stdout, everything else on stderr, exit codes, schemas, progress."""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jsonschema
import pytest

from resnext_deploy import __version__, logs
from resnext_deploy.artifacts import CALIBRATION_NAME
from resnext_deploy.backends.tensorrt.options import BuildOptions
from resnext_deploy.backends.tensorrt.probe import tensorrt_status
from resnext_deploy.backends.tensorrt.trtexec import build_trt_command, trtexec_command
from resnext_deploy.cli import main
from resnext_deploy.data import open_dataset
from resnext_deploy.errors import ExitCode
from resnext_deploy.precision.calibration import calibrate
from resnext_deploy.schemas import SCHEMA_VERSION, load_schema
from resnext_deploy.serving.load_test import LoadRow, write_triton_bench
from resnext_deploy.source import SourceOptions, resolve_source

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_FAST = ["--backends", "onnxruntime", "--precisions", "fp32", "--batch-sizes", "1"]
BENCH_FAST += ["--duration", "0.1", "--warmup-ms", "0", "--min-iterations", "2", "--threads", "1"]


@pytest.fixture(autouse=True)
def quiet_logging():
    """Each test starts and ends with the CLI's default (quiet) logging."""
    logs.setup(verbose=False)
    yield
    logs.setup(verbose=False)


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The real command in a subprocess, so that the streams are the process's own."""
    env = {**os.environ, "COLUMNS": "120"}
    command = [sys.executable, "-m", "resnext_deploy", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env, **kwargs)


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"resnext-deploy {__version__}"


def test_flags_show_no_value_type_in_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    assert main(["build-trt", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--fp16" in out and "--onnx-only" in out and "--version-compatible" in out
    assert "<bool>" not in out
    assert "<entropy|minmax|percentile>" in out  # choices are listed


def test_verify_table_on_stdout_logs_on_stderr(tiny_dir: Path, tmp_path: Path):
    """`verify > out.txt` holds the table; progress and the log line are on stderr."""
    out_file = tmp_path / "out.txt"
    with out_file.open("w") as out:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "resnext_deploy",
                "verify",
                "--dir",
                str(tiny_dir),
                "--count",
                "8",
                "--backends",
                "onnxruntime",
            ],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    table = out_file.read_text()
    assert "verify: passed" in table and "│ pass" in table
    assert "verifying 1 candidate(s)" in done.stderr and "8/8 images" in done.stderr
    assert "verifying" not in table and "verify: passed" not in done.stderr


def test_json_dash_puts_only_json_on_stdout(tiny_dir: Path):
    """`verify --json - | python -m json.tool` works: stdout is the JSON, byte for byte DIR/verify.json."""
    done = _cli("verify", "--dir", str(tiny_dir), "--count", "8", "--json", "-")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (tiny_dir / "verify.json").read_text()
    assert json.loads(done.stdout)["passed"] is True
    assert "verify: passed" in done.stderr  # the table moved to stderr
    assert not (REPO_ROOT / "-").exists() and not (tiny_dir / "-").exists()
    piped = subprocess.run([sys.executable, "-m", "json.tool"], input=done.stdout, capture_output=True, text=True)
    assert piped.returncode == 0


@pytest.mark.slow  # a bench run
def test_bench_json_dash_and_table(tiny_dir: Path, capsys):
    assert main(["bench", "--dir", str(tiny_dir), *BENCH_FAST, "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == json.loads((tiny_dir / "bench.json").read_text())
    assert "bench (milliseconds per batch)" in captured.err
    assert main(["bench", "--dir", str(tiny_dir), *BENCH_FAST]) == 0
    captured = capsys.readouterr()
    assert "bench (milliseconds per batch)" in captured.out and "starting 1 runner process" in captured.err


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
@pytest.mark.parametrize("command", ["verify", "bench"])
def test_json_at_a_non_regular_target_is_refused_before_any_work(tiny_dir: Path, tmp_path: Path, capsys, kind, command):
    target = {"fifo": tmp_path / "pipe", "device": Path("/dev/null"), "directory": tmp_path / "folder"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    extra = BENCH_FAST if command == "bench" else []
    started = time.monotonic()
    assert main([command, "--dir", str(tiny_dir), *extra, "--json", str(target)]) == ExitCode.BAD_INPUT
    assert time.monotonic() - started < 10  # no hang on the FIFO
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(target) in err and "not a regular file" in err
    assert not (tiny_dir / f"{command}.json").exists()  # nothing was computed first
    assert {"fifo": target.is_fifo, "device": target.is_char_device, "directory": target.is_dir}[kind]()


USAGE_ERRORS = [
    (["build-trt", "--calib-method", "foo"], "--calib-method"),
    (["build-trt", "--high-precision", "bf16"], "--high-precision"),
    (["build-trt", "--hardware-compat", "turing"], "--hardware-compat"),
    (["build-trt", "--fp16", "--int8"], "'--fp16' / '--int8'"),
    (["pipeline", "--calib-method", "kl"], "--calib-method"),
    (["bench", "--backends", "onnx"], "--backends"),
    (["bench", "--precisions", "fp8"], "--precisions"),
    (["verify", "--backends", "onnx"], "--backends"),
    (["triton-repo", "--out", "repo", "--onnx-kind", "tpu"], "--onnx-kind"),
    (["serve", "--precision", "bf16"], "--precision"),
    (["export", "--no-such-flag"], "--no-such-flag"),
    (["build-trt", "--fp16", "true"], "true"),
]


@pytest.mark.parametrize("args,name", USAGE_ERRORS)
def test_usage_errors_exit_2_with_one_line(tiny_dir: Path, capsys, args, name):
    assert main([args[0], "--dir", str(tiny_dir), *args[1:]]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and name in err
    assert "Traceback" not in err


@pytest.mark.skipif(tensorrt_status() is None, reason="TensorRT is installed here")
@pytest.mark.parametrize("command", ["bench", "verify"])
def test_a_backend_asked_for_by_name_that_is_missing_exits_4(tiny_dir: Path, capsys, command):
    assert main([command, "--dir", str(tiny_dir), "--backends", "tensorrt"]) == ExitCode.BACKEND_UNAVAILABLE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resnext-deploy[tensorrt-cu1" in err


def test_verify_backends_limits_the_candidates(tiny_dir: Path, capsys):
    assert main(["verify", "--dir", str(tiny_dir), "--count", "4", "--backends", "torch"]) == 0
    record = json.loads((tiny_dir / "verify.json").read_text())
    assert record["results"] == [] and record["reference"]["backend"] == "torch"


def test_library_warnings_are_quiet_by_default_and_shown_with_verbose(capsys):
    import onnxruntime

    logs.setup(verbose=False)
    warnings.warn("a library complains", UserWarning, stacklevel=1)
    logging.getLogger("onnxruntime").warning("a runtime line")
    assert capsys.readouterr().err == ""
    assert logs.ort_severity() == logs.ORT_QUIET

    assert main(["-v", "archs"]) == 0
    capsys.readouterr()
    warnings.warn("a library complains", UserWarning, stacklevel=1)
    logging.getLogger("onnxruntime").warning("a runtime line")
    err = capsys.readouterr().err
    assert "a library complains" in err and "a runtime line" in err
    assert logs.ort_severity() == logs.ORT_VERBOSE
    session_options = onnxruntime.SessionOptions()
    assert session_options.log_severity_level in (-1, logs.ORT_QUIET, logs.ORT_VERBOSE)  # default follows the logger


def test_trtexec_paths_are_absolute_or_relative_to_a_report(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = BuildOptions(timing_cache=Path("cache.bin"))
    line = trtexec_command(Path("out/model.onnx"), Path("out/model.engine"), options, 32, trt_major=10)
    assert f"--onnx={tmp_path / 'out' / 'model.onnx'}" in line
    assert f"--saveEngine={tmp_path / 'out' / 'model.engine'}" in line
    assert f"--timingCacheFile={tmp_path / 'cache.bin'}" in line
    relative = trtexec_command(
        Path("out/model.onnx"), Path("out/model.engine"), options, 32, trt_major=10, relative_to="out"
    )
    assert "--onnx=model.onnx --saveEngine=model.engine" in relative
    assert "--timingCacheFile=../cache.bin" in relative
    assert (
        build_trt_command(Path("out/model.int8.engine")) == f"resnext-deploy build-trt --dir {tmp_path / 'out'} --int8"
    )


def _validate(name: str, record: dict) -> None:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(record, schema, cls=jsonschema.Draft202012Validator)
    assert record["schema_version"] == SCHEMA_VERSION


@pytest.mark.slow  # a bench run
def test_outputs_match_their_json_schemas(tiny_dir: Path, tmp_path: Path):
    """Real verify.json, bench.json, calibration.json and bench_triton.json of the tiny model against the schemas."""
    assert main(["verify", "--dir", str(tiny_dir), "--count", "8"]) == 0
    _validate("verify", json.loads((tiny_dir / "verify.json").read_text()))
    assert main(["bench", "--dir", str(tiny_dir), *BENCH_FAST]) == 0
    _validate("bench", json.loads((tiny_dir / "bench.json").read_text()))

    dataset = open_dataset(None, resolve_source(SourceOptions("resnext_tiny")).preprocessing, count=8)
    calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, "minmax", log=lambda _m: None)
    _validate("calibration", json.loads((tiny_dir / CALIBRATION_NAME).read_text()))

    row = LoadRow("http://127.0.0.1:1", "http", "m", 1, 1, 0.5, 0, 0, 0.0, 0.0, None, None, None, None, None, "down")
    json_path, _ = write_triton_bench([row], tmp_path / "triton")
    _validate("bench_triton", json.loads(json_path.read_text()))

    broken = json.loads((tiny_dir / "verify.json").read_text())
    del broken["schema_version"]
    with pytest.raises(jsonschema.ValidationError):
        _validate("verify", broken)


def test_verify_draws_a_progress_bar_in_a_terminal(tiny_dir: Path):
    """Under a pseudo-terminal on stderr, verify draws Rich's bar; stdout (a pipe) still gets the plain table."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resnext_deploy",
            "verify",
            "--dir",
            str(tiny_dir),
            "--count",
            "64",
            "--backends",
            "onnxruntime",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    terminal = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        elif process.poll() is not None:
            break
    os.close(primary)
    stdout = process.stdout.read().decode()
    assert process.wait(60) == 0
    text = terminal.decode(errors="replace")
    assert "verify (2 runners)" in text and "100%" in text and "\x1b[" in text  # Rich's live bar
    assert "images," not in text  # not the plain line progress of a non-terminal
    assert "verify: passed" in stdout and "\x1b[" not in stdout and "100%" not in stdout
