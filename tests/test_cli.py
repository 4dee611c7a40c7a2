"""The CLI: one-line errors, documented exit codes, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnext_deploy.cli import main
from resnext_deploy.errors import ExitCode
from resnext_deploy.models import ARCHS, LIBRARY_ARCHS, create_model


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_help_and_info(capsys):
    assert main(["--help"]) == 0
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime providers" in out and "tensorrt" in out


def test_archs_lists_the_registry(capsys):
    assert main(["archs"]) == 0
    assert "resnext50_32x4d" in capsys.readouterr().out


def test_export_tiny(tmp_path: Path, capsys):
    assert main(["export", "--arch", "resnext_tiny", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "model.onnx").exists()
    assert "max abs diff" in capsys.readouterr().err


def test_usage_error_is_exit_2(tmp_path: Path):
    assert main(["export", "--dir", str(tmp_path), "--no-such-flag"]) == ExitCode.USAGE


@pytest.mark.parametrize(
    "setup,args,message",
    [
        ("other_arch", ["--arch", "resnext_tiny"], "does not fit --arch resnext_tiny"),
        ("truncated", ["--arch", "resnext_tiny"], "truncated"),
        ("missing", ["--arch", "resnext_tiny"], "does not exist"),
        ("none", ["--arch", "resnet18"], "unknown architecture"),
        ("none", ["--arch", "resnext_tiny", "--opset", "5"], "--opset"),
        ("none", ["--arch", "resnext_tiny", "--num-classes", "0"], "--num-classes"),
    ],
)
def test_bad_inputs_give_one_line_and_no_model(tmp_path: Path, capsys, setup, args, message):
    checkpoint = tmp_path / "ckpt.pth"
    if setup == "other_arch":
        state = create_model("resnext29_8x64d").state_dict()
        torch.save({k: v for k, v in state.items() if not k.startswith("layer3")}, checkpoint)
    elif setup == "truncated":
        torch.save(create_model("resnext_tiny").state_dict(), checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    extra = ["--checkpoint", str(checkpoint)] if setup != "none" else []
    out_dir = tmp_path / "out"
    code = main(["export", *args, *extra, "--dir", str(out_dir)])
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.BAD_INPUT
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "model.onnx" not in _leftovers(out_dir)


def test_dir_that_is_a_file(tmp_path: Path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["export", "--arch", "resnext_tiny", "--dir", str(target)]) == ExitCode.BAD_INPUT
    assert "is a file" in capsys.readouterr().err


def test_dir_under_a_file_is_unwritable(tmp_path: Path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["export", "--arch", "resnext_tiny", "--dir", str(tmp_path / "file" / "sub")]) == ExitCode.BAD_INPUT
    assert "cannot write" in capsys.readouterr().err


def test_interrupted_export_leaves_nothing(tmp_path: Path, monkeypatch):
    import resnext_deploy.export as export_module

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "check_export", interrupted)
    assert main(["export", "--arch", "resnext_tiny", "--dir", str(tmp_path)]) == ExitCode.INTERRUPTED
    assert [p for p in _leftovers(tmp_path) if not p.startswith(".resnext-deploy.lock")] == []


def test_debug_variable_shows_the_traceback(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RESNEXT_DEPLOY_DEBUG", "1")
    with pytest.raises(Exception, match="unknown architecture"):
        main(["export", "--arch", "resnet18", "--dir", str(tmp_path)])


def test_artifacts_are_readable_by_others(tiny_dir: Path):
    """Atomic writes must not leave mkstemp's private 0600 mode on artifacts (a server user reads them)."""
    assert (tiny_dir / "model.onnx").stat().st_mode & 0o044 == 0o044
    assert (tiny_dir / "manifest.json").stat().st_mode & 0o044 == 0o044


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnext_tiny", "--preset", "imagenet"], "unknown --preset 'imagenet'"),
        (["--arch", "resnext_tiny", "--interpolation", "nearest"], "--interpolation must be one of bilinear, bicubic"),
        (["--checkpoint", "ckpt.pth"], "--checkpoint needs --arch"),
    ],
)
def test_invalid_choices_are_usage_errors(tmp_path: Path, capsys, args, message):
    code = main(["export", *args, "--dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.USAGE
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["-h"], ["export", "-h"], ["build-trt", "-h"], ["report", "-h"]])
def test_dash_h_is_help(capsys, args):
    assert main(args) == 0
    assert "Usage:" in capsys.readouterr().out


def test_export_says_what_it_chose_on_stderr(tmp_path: Path, capsys):
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"n{i}\n" for i in range(10)))
    args = ["--arch", "resnext_tiny", "--preset", "timm", "--image-size", "32", "--class-names", str(names)]
    assert main(["export", *args, "--dir", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "model: resnext_tiny, 10 classes: n0, n1," in err
    assert "resize the short side to 34 (bicubic), center crop 32, mean 0.485,0.456,0.406" in err
    lines = err.splitlines()
    # each slow phase is announced before it starts, so the command is never silent for long
    for phase in ("building the PyTorch model", "exporting to ONNX", "checking the ONNX file"):
        assert any(line.startswith(phase) for line in lines), phase
    assert "model:" not in out  # logs never on stdout


def test_build_trt_without_tensorrt_is_one_block(tiny_dir: Path, capsys):
    from resnext_deploy.backends.tensorrt.probe import tensorrt_status

    if tensorrt_status() is None:
        pytest.skip("TensorRT can build here")
    assert main(["build-trt", "--dir", str(tiny_dir)]) == ExitCode.BACKEND_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out.count("trtexec ") == 1 and out.strip().startswith("trtexec --onnx=")  # the result, once
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "trtexec --onnx" not in error[0] and "--onnx-only" in error[0]


def test_info_shows_openvino_torchvision_and_timm(capsys, monkeypatch):
    import resnext_deploy.environment as environment

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("openvino", "torchvision", "timm"):
        [line] = [line for line in out.splitlines() if line.split()[0] == name]
        assert line.split(None, 1)[1] == (environment.package_version(name) or "not installed")
    monkeypatch.setattr(environment, "torchvision_mismatch", lambda: "torchvision 0.28.0+cu130 is a CUDA build")
    assert main(["info"]) == 0
    out, err = capsys.readouterr()
    assert "warning: torchvision 0.28.0+cu130 is a CUDA build" in err and "import timm" in err
    assert "warning" not in out


def test_archs_answers_without_building_or_importing_torch():
    code = "import sys; from resnext_deploy.cli import main; main(['archs']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *table, imported = done.stdout.splitlines()
    assert imported == "False" and len(table) == len(ARCHS) + len(LIBRARY_ARCHS)
    assert "resnext50_32x4d          25.03M params  1000 classes" in table[0]
    [seresnext] = [line for line in table if line.startswith("seresnext50_32x4d ")]
    assert "27.56M params" in seresnext and "timm: SE" in seresnext  # timm's count, from the table
    assert done.stderr.strip().startswith(f"{len(ARCHS)} built in; {len(LIBRARY_ARCHS)} built through timm (timm")
