"""The install works in the user's environment: public pins that PyPI alone resolves, and torch's own torchvision.

The resolution tests ask PyPI itself (``--isolated`` and ``PIP_CONFIG_FILE=/dev/null`` drop this machine's
wheel folder, mirrors and constraints) and skip only when PyPI cannot be reached. The timm test follows the
README's CPU-only install in a throwaway environment and skips only when PyTorch's CPU index cannot be reached.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from resnext_deploy.environment import torchvision_mismatch

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple/"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # the README's source of the small CPU-only torch
CONSTRAINTS = {"constraints.txt": "dev,openvino", "constraints-triton.txt": "dev,triton,openvino"}


def _pins(name: str) -> dict[str, Requirement]:
    lines = (REPO_ROOT / name).read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {r.name.lower().replace("_", "-"): r for r in requirements}


def _reachable(url: str) -> bool:
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        return False
    return True


def _isolated_pip_env() -> dict[str, str]:
    """No pip configuration of this machine (wheel folder, mirrors, constraint file): what a clean machine has."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull}


@pytest.mark.parametrize("name", CONSTRAINTS)
def test_constraints_pin_public_versions_only(name: str) -> None:
    """A local label (``+cpu``) exists only on the index that built it; PyPI cannot serve it."""
    pins = _pins(name)
    assert "torch" in pins and "torchvision" not in pins  # torchvision must be the installed torch's own build
    for requirement in pins.values():
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and "+" not in specifier.version, requirement


@pytest.mark.slow
@pytest.mark.skipif(not _reachable(PYPI), reason="PyPI is not reachable from here")
@pytest.mark.parametrize(("name", "extras"), CONSTRAINTS.items())
def test_constraints_resolve_from_pypi_alone(name: str, extras: str, tmp_path: Path) -> None:
    """pip resolves the project and its extras against PyPI's metadata alone, to exactly the pinned versions."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "-q"]
    command += ["--no-build-isolation", "--index-url", PYPI, "--report", str(report), "-c", name, f".[{extras}]"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=_isolated_pip_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item for item in installs}
    for item in installs:
        url = item["download_info"]["url"]
        assert url.startswith(("https://files.pythonhosted.org/", "file://")), url  # file://: the project itself
    for package, requirement in _pins(name).items():
        if package in resolved:
            assert requirement.specifier.contains(resolved[package]["metadata"]["version"]), (package, requirement)
    assert {"torch", "onnx", "onnxruntime", "numpy", "tritonclient"} <= set(resolved)


def test_the_installed_torchvision_fits_the_installed_torch() -> None:
    """Whatever this environment holds imports: a torchvision built for this torch, or none at all."""
    assert torchvision_mismatch() is None


def test_a_torchvision_built_for_another_torch_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyPI's CUDA torchvision beside a CPU torch (or for another release): found from its files, not imported."""
    import torch

    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('torchvision must not be imported here')\n")
    (package / "version.py").write_text("__version__ = '0.28.0+cu990'\n")
    info = tmp_path / "torchvision-0.28.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "cu990" in (torchvision_mismatch() or "")  # a CUDA 99 build fits no torch here
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\nRequires-Dist: torch (==1.0.0)\n"
    )
    assert torchvision_mismatch() == f"torchvision 0.28.0 needs torch==1.0.0, not torch {torch.__version__}"
    (package / "version.py").write_text("__version__ = '0.28.0+cpu'\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0+cpu\n")
    assert torchvision_mismatch() is None  # a CPU build runs beside any torch build of its release


TIMM_CHECK = textwrap.dedent(
    """
    import sys, timm, torch
    model = timm.create_model("resnext50_32x4d", pretrained=False, num_classes=4)
    torch.save(model.state_dict(), sys.argv[1])
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not _reachable(TORCH_CPU_INDEX), reason="PyTorch's CPU index is not reachable from here")
def test_timm_installs_imports_and_exports_in_a_fresh_environment(tmp_path: Path) -> None:
    """The README's CPU install, then `pip install timm`: timm imports, and its ResNeXt exports with --preset timm."""
    venv.create(tmp_path / "env", with_pip=True)
    python = str(tmp_path / "env" / "bin" / "python")

    def pip(*args: str) -> None:
        command = [python, "-m", "pip", "install", "-q", *args]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    torch_pin = str(_pins("constraints.txt")["torch"].specifier)
    pip("--index-url", TORCH_CPU_INDEX, f"torch{torch_pin}", "torchvision")  # README, Install: CPU-only torch
    pip("-c", "constraints.txt", ".")
    pip("timm")
    checkpoint = tmp_path / "timm_resnext50.pth"
    done = subprocess.run([python, "-c", TIMM_CHECK, str(checkpoint)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    command = [python, "-m", "resnext_deploy", "export", "--arch", "resnext50_32x4d", "--checkpoint", str(checkpoint)]
    command += ["--preset", "timm", "--dir", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 classes" in done.stderr and "bicubic" in done.stderr
    assert (tmp_path / "out" / "model.onnx").exists()
