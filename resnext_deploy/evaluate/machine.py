"""The machine a measurement belongs to: its CPU and instruction sets, and how busy other processes kept it.

CPU figures mean little without the CPU's flags (VNNI and AMX decide INT8 speed) and without knowing
whether something else ran at the same time; both are read from ``/proc`` (Linux). Elsewhere the
flags are "unknown" and the load monitor says it could not look.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..serde import JSON_KEY

# Instruction-set flags that decide CPU inference speed, in the order they are listed.
ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
)
# A slice is disturbed when other processes used more than this fraction of the machine's CPU time during it.
DISTURBED_CPU = 0.10
# ... and at least this many clock ticks (1/100 s each): shorter slices cannot resolve 10% of two cores.
MIN_TICKS = 3
_PROC = Path("/proc")


def cpu_flags() -> tuple[str, ...] | None:
    """The :data:`ISA_FLAGS` this CPU has, or None where ``/proc/cpuinfo`` cannot be read."""
    try:
        text = (_PROC / "cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return tuple(flag for flag in ISA_FLAGS if flag in present)
    return None


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


@dataclass(frozen=True)
class CpuSample:
    """Clock ticks so far: busy and total for the whole machine, and used by the processes we account for."""

    busy: int
    total: int
    ours: int


def _machine_ticks() -> tuple[int, int]:
    fields = (_PROC / "stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _process_ticks(pid: int | str) -> int:
    text = (_PROC / str(pid) / "stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


class LoadMonitor:
    """How much CPU time processes other than ours used between two samples, as a fraction of the machine.

    Ours are this process and the worker being measured; steal time (the hypervisor running someone
    else) counts as other load. ``available`` is False where ``/proc`` cannot be read.
    """

    def __init__(self) -> None:
        try:
            _machine_ticks()
            _process_ticks("self")
            self.available = True
        except (OSError, ValueError, IndexError):
            self.available = False

    def sample(self, pid: int) -> CpuSample | None:
        if not self.available:
            return None
        try:
            busy, total = _machine_ticks()
            return CpuSample(busy, total, _process_ticks("self") + _process_ticks(pid))
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def others(before: CpuSample | None, after: CpuSample | None) -> tuple[int, int] | None:
        """(ticks other processes used, ticks the machine had) between two samples; None if either is missing."""
        if before is None or after is None:
            return None
        total = after.total - before.total
        other = (after.busy - before.busy) - (after.ours - before.ours)
        return max(other, 0), max(total, 0)


def process_cpu_ns(pid: int, waiting: bool = False) -> int | None:
    """CPU time all threads of a process have used, in nanoseconds (``/proc/PID/task/*/schedstat``); None if unreadable.

    Nanoseconds, not the 10 ms clock ticks of ``/proc/PID/stat``: a pool that spins for 30 ms after its
    last call shows up here. ``waiting`` adds the time its threads were runnable but waited for a CPU: what
    they wanted to run, which a busy machine does not hide.
    """
    total, read = 0, False
    try:
        tasks = os.listdir(_PROC / str(pid) / "task")
    except OSError:
        return None
    for task in tasks:
        try:
            fields = (_PROC / str(pid) / "task" / task / "schedstat").read_text().split()
            total += int(fields[0]) + (int(fields[1]) if waiting else 0)
            read = True
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return total if read else None


def running_threads(pid: int) -> int | None:
    """How many threads of a process are running or runnable now (state R in ``/proc/PID/task/*/stat``).

    A pool thread that spins is in R whether or not it holds a CPU (other load, or a cgroup's CPU quota,
    can keep it off for tens of milliseconds); one that sleeps is not. None where it cannot be read.
    """
    try:
        tasks = os.listdir(_PROC / str(pid) / "task")
    except OSError:
        return None
    running = 0
    for task in tasks:
        try:
            text = (_PROC / str(pid) / "task" / task / "stat").read_text()
            running += text[text.rindex(")") + 2] == "R"
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return running


# A process is quiet once none of its threads was running or runnable for QUIET_WINDOW_S.
QUIET_WINDOW_S = 0.01
QUIET_POLL_S = 0.001


def quiet_after(pid: int, limit_s: float) -> float | None:
    """Seconds from now until process ``pid`` goes quiet (its pools stop spinning), at most ``limit_s``.

    Polls its threads' states (:func:`running_threads`) every millisecond; quiet is the start of the first
    stretch of :data:`QUIET_WINDOW_S` in which none was running or runnable. Returns ``limit_s`` if it never
    went quiet, None where ``/proc`` cannot be read.
    """
    start = time.perf_counter()
    quiet_since: float | None = None
    while (now := time.perf_counter()) - start < limit_s + QUIET_WINDOW_S:
        running = running_threads(pid)
        if running is None:
            return None
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= QUIET_WINDOW_S:
            return min(quiet_since - start, limit_s)
        time.sleep(QUIET_POLL_S)
    return limit_s


def disturbed(other_ticks: int, total_ticks: int) -> bool:
    """Whether a slice with these tick counts was disturbed (see :data:`DISTURBED_CPU`)."""
    return total_ticks > 0 and other_ticks >= MIN_TICKS and other_ticks / total_ticks > DISTURBED_CPU


def _key(name: str) -> Any:
    """A field whose key in the JSON files is ``name`` (spaces, as the machine tables show it)."""
    return field(metadata={JSON_KEY: name})


@dataclass(frozen=True)
class MachineRecord:
    """The machine and library versions numbers belong to: CPU model and ISA flags, cores, threads used.

    Written under ``machine`` in bench.json (and the serving load tests' files) with the keys the
    tables show (``"cpu flags"``), so a reader sees the same names in the JSON and in report.md.
    """

    resnext_deploy: str = _key("resnext-deploy")
    python: str = _key("python")
    platform: str = _key("platform")
    cpu: str = _key("cpu")
    torch: str = _key("torch")
    torch_cuda: str = _key("torch cuda")
    cuda_devices: str = _key("cuda devices")
    onnx: str = _key("onnx")
    onnxruntime: str = _key("onnxruntime")
    onnxruntime_providers: str = _key("onnxruntime providers")
    tensorrt: str = _key("tensorrt")
    openvino: str = _key("openvino")
    cpu_flags: str = _key("cpu flags")  # the ISA_FLAGS present, space-separated, or "unknown"
    cpu_cores: int | None = _key("cpu cores")
    cpus_usable: int = _key("cpus usable")
    threads_requested: int | str = _key("threads requested")  # --threads, or "library defaults"


def machine_record(threads: int | None) -> MachineRecord:
    """This machine, as :class:`MachineRecord` records it."""
    from ..environment import describe, package_version, usable_cpus

    described = describe()
    flags = cpu_flags()
    return MachineRecord(
        resnext_deploy=described["resnext-deploy"],
        python=described["python"],
        platform=described["platform"],
        cpu=described["cpu"],
        torch=described["torch"],
        torch_cuda=described["torch cuda"],
        cuda_devices=described["cuda devices"],
        onnx=described["onnx"],
        onnxruntime=described["onnxruntime"],
        onnxruntime_providers=described["onnxruntime providers"],
        tensorrt=described["tensorrt"],
        openvino=package_version("openvino") or "not installed",
        cpu_flags=" ".join(flags) if flags is not None else "unknown",
        cpu_cores=os.cpu_count(),
        cpus_usable=usable_cpus(),
        threads_requested=threads if threads else "library defaults",
    )
