"""``make trt-typecheck`` catches the mistakes it exists for, and passes the code as it is.

Each test copies the package into a temporary directory, plants one mistake in the TensorRT backend and runs
``scripts/trt_typecheck.py`` on the copy, against NVIDIA's real bindings (their wheels come from PyPI into the
tool's cache; the first run takes about a minute, later ones seconds). Where PyPI or a C compiler is missing
the module skips, saying why.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
BACKEND = "resnext_deploy/backends/tensorrt"


tool = load_script("trt_typecheck")
OLDEST, NEWEST = list(tool.VERSIONS)[0], list(tool.VERSIONS)[-1]


@pytest.fixture(scope="module")
def cache() -> Path:
    """The tool's own cache, prepared for every version (reused across runs), or a skip saying why not."""
    for version in tool.VERSIONS:
        try:
            tool.prepare(version, tool.DEFAULT_CACHE)
        except tool.PrepareError as exc:
            pytest.skip(f"NVIDIA's TensorRT bindings could not be prepared here: {exc}")
    return tool.DEFAULT_CACHE


def _copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "resnext_deploy", project / "resnext_deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", project / "pyproject.toml")
    return project


def _plant(project: Path, module: str, old: str, new: str) -> None:
    path = project / BACKEND / module
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not (once) in {BACKEND}/{module}; update this test with the code"
    path.write_text(text.replace(old, new))


def _check(project: Path, cache: Path, versions: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = tool.main(["--project", str(project), "--cache", str(cache), "--versions", ",".join(versions)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_oldest_version_checked_is_the_oldest_supported():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"tensorrt-cu12>={'.'.join(OLDEST.split('.')[:2])},<12" in extras["tensorrt-cu12"]
    assert NEWEST.startswith("11.")


@pytest.mark.slow  # mypy
def test_the_code_as_it_is_passes_against_every_version(cache: Path, tmp_path: Path, capsys):
    code, out = _check(_copy(tmp_path), cache, list(tool.VERSIONS), capsys)
    assert code == 0, out
    assert all(f"TensorRT {version}: passed" in out for version in tool.VERSIONS), out


@pytest.mark.slow  # mypy
def test_a_builder_flag_that_11x_removed_fails_against_11x_only(cache: Path, tmp_path: Path, capsys):
    project = _copy(tmp_path)
    _plant(
        project,
        "build.py",
        "config.clear_flag(trt.BuilderFlag.TF32)\n",
        "config.clear_flag(trt.BuilderFlag.TF32)\n    config.set_flag(trt.BuilderFlag.FP16)\n",
    )
    code, out = _check(project, cache, [OLDEST, NEWEST], capsys)
    assert code == 1, out
    assert f"TensorRT {OLDEST}: passed" in out and f"TensorRT {NEWEST}: FAILED" in out, out
    assert '"type[BuilderFlag]" has no attribute "FP16"' in out, out


@pytest.mark.slow  # mypy
def test_a_call_with_a_missing_argument_fails(cache: Path, tmp_path: Path, capsys):
    project = _copy(tmp_path)
    old = "trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)"
    _plant(project, "build.py", old, "trt.MemoryPoolType.WORKSPACE)")
    code, out = _check(project, cache, [NEWEST], capsys)
    assert code == 1, out
    assert 'Missing positional argument "pool_size" in call to "set_memory_pool_limit"' in out, out


@pytest.mark.slow  # mypy
def test_a_misspelled_execution_context_method_fails(cache: Path, tmp_path: Path, capsys):
    project = _copy(tmp_path)
    _plant(project, "runner.py", ".execute_async_v3(", ".execute_async_v2(")  # TensorRT 8's name, gone since 10.0
    code, out = _check(project, cache, [OLDEST], capsys)
    assert code == 1, out
    assert '"IExecutionContext" has no attribute "execute_async_v2"' in out, out
