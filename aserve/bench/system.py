"""What the benchmark reads from Linux's /proc: a process tree's CPU time and memory, each CPU's
busy share, the machine's description; and CPU pinning of the processes it starts. Where there
is no /proc (macOS, Windows) or no affinity call, the figures are zero and nothing is pinned:
the benchmark runs, with less to say."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if sys.platform != "win32":
    import resource

# Linux's USER_HZ, the unit of /proc's CPU times; elsewhere nothing is read in it.
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def pin_self(cpu: int | None) -> None:
    if cpu is not None:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, {cpu})


# Sets the affinity, then becomes the command: everything it starts inherits the CPU.
_PIN_SHIM = (
    "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    """`command` run on `cpu` only (None: anywhere): through `taskset -c`, which sets the
    affinity before exec so that every thread and process the program starts inherits it,
    or through a small Python shim doing the same where util-linux is missing."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return command
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *command]
    return [sys.executable, "-c", _PIN_SHIM, str(cpu), *command]


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return (_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its living descendants (gunicorn's and granian's workers, for example)."""
    children: dict[int, list[int]] = {}
    try:
        entries = list(_PROC.iterdir())
    except OSError:
        return [pid]  # no /proc: the process alone
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(parent, []).append(int(entry.name))
    tree: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, ()))
    return tree


def tree_cpu_s(pid: int, reaped: bool = False) -> float:
    """User + system CPU seconds of `pid` and its living descendants, all threads; with
    `reaped`, also those of the children they waited for (a reloading server's old workers,
    which exit while it is measured)."""
    last = 15 if reaped else 13
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(member)
            total += sum(int(value) for value in fields[11:last])
    return total / _TICK


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process tree in bytes: now, and the peak since start (or since the
    last `reset_peak`). Summed over processes, so pages they share count once per process."""

    rss: int
    peak: int


def _status_kib(pid: int, key: str) -> int:
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def tree_memory(pid: int) -> Memory:
    rss = peak = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            rss += _status_kib(member, "VmRSS:") * 1024
            peak += _status_kib(member, "VmHWM:") * 1024
    return Memory(rss=rss, peak=peak)


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS for the tree (Linux 4.0+: write 5 to clear_refs)."""
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            (_PROC / str(member) / "clear_refs").write_text("5")


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (wrk, the built-in generator)."""
    if sys.platform == "win32":
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Ticks:
    """Counters of one CPU (or all, `cpu` None) from /proc/stat."""

    total: int
    idle: int

    @classmethod
    def read(cls, cpu: int | None) -> Ticks:
        prefix = "cpu " if cpu is None else f"cpu{cpu} "
        with contextlib.suppress(OSError):
            for line in (_PROC / "stat").read_text().splitlines():
                if line.startswith(prefix):
                    values = [int(v) for v in line.split()[1:]]
                    # user nice system idle iowait irq softirq steal; guest is inside user.
                    return cls(sum(values[:8]), values[3] + values[4])
        return cls(0, 0)

    def busy_since(self, before: Ticks) -> tuple[float, float]:
        """(busy share, elapsed CPU seconds) between `before` and this sample."""
        total = max(1, self.total - before.total)
        return 1 - (self.idle - before.idle) / total, total / _TICK


def wait_until_quiet(limit: float, threshold: float = 0.10, window: float = 0.5) -> float:
    """Wait (at most `limit` s) until the whole machine is below `threshold` busy over `window`
    seconds, so a run does not start in someone else's burst; the seconds waited."""
    started = time.monotonic()
    while True:
        before = Ticks.read(None)
        time.sleep(window)
        busy, _ = Ticks.read(None).busy_since(before)
        waited = time.monotonic() - started
        if busy < threshold or waited >= limit:
            return waited


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in (_PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def memory_total() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in (_PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0
