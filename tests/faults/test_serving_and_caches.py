"""Hostile requests to the served endpoint, stale and tampered caches, resources, protected files, offline runs.

Like the first two batteries (test_faults.py, test_inputs_second_battery.py), every case asserts the
documented exit code, one ``error:`` line and no traceback, and that nothing is written outside ``--dir``;
where memory is the point, the case runs in a child process whose peak RSS is bounded. Cases that need
PyTriton live in tests/serving (they run in the Triton environment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import TINY, cli, fails

from resnext_deploy.artifacts import MANIFEST_NAME
from resnext_deploy.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]


def child_env(home: Path) -> dict[str, str]:
    """A fresh process's environment: this checkout first on the path, HOME a folder the test watches."""
    return {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO), "RESNEXT_DEPLOY_DEBUG": ""}


# ----------------------------------------------------------------------------------------------
# Offline by default


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("strace"),
    reason="needs root (a network namespace) and strace",
)
def test_verify_makes_no_lookup_and_writes_nothing_under_home(tiny_dir: Path, tmp_path: Path) -> None:
    """In a namespace without a network, strace sees no resolver read and no internet socket; HOME stays empty."""
    home = tmp_path / "home"
    home.mkdir()
    trace = tmp_path / "trace.txt"
    command = ["unshare", "-n", "strace", "-f", "-qq", "-e", "trace=connect,openat", "-o", str(trace)]
    command += [sys.executable, "-m", "resnext_deploy", "verify", "--dir", str(tiny_dir), "--count", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env(home), cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    lines = trace.read_text().splitlines()
    lookups = [line for line in lines if "resolv.conf" in line or "AF_INET" in line]
    assert lookups == [], lookups[:5]
    assert list(home.rglob("*")) == []
