"""The CLI: one-line errors, documented exit codes, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnext_deploy.cli import main
from resnext_deploy.errors import ExitCode
from resnext_deploy.models import create_model


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
