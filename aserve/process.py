"""What aserve tunes in a process it runs: the event loop implementation, the garbage
collector, and how the kernel schedules the WSGI pool's threads; and the switch that makes
Linux take the paths other platforms need (ASERVE_PORTABLE)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
from collections.abc import Callable

from aserve.config import LoopKind
from aserve.errors import ConfigError

# The young generation is collected after this many net allocations of tracked objects
# (Python's default: 700; see Config.tune_gc). Measured: 50,000 did no better at 1000
# connections and cost a Django view 6-12% (a young generation that no longer fits in the
# CPU caches); 5,000 keeps the gain of the freeze and the Django rate.
GC_YOUNG_THRESHOLD = 5_000
_PYTHON_YOUNG_THRESHOLD = 700


# Set to 1, Linux takes the paths macOS and Windows need, so that they run in tests: stream
# sockets for the reload IPC, spawned reload workers, signal.signal handlers, and the asyncio
# loop for --loop auto. Settings given explicitly (--loop uvloop, --reload-worker fork) win.
PORTABLE_ENV = "ASERVE_PORTABLE"


def portable_forced() -> bool:
    """Whether ASERVE_PORTABLE=1 asks for the portable paths where the native ones exist."""
    return os.environ.get(PORTABLE_ENV) == "1"


def loop_factory(kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    """How to make the event loop `--loop` names; `auto` prefers uvloop when installed (and
    takes asyncio's under ASERVE_PORTABLE=1, as where uvloop does not install)."""
    if kind == "uvloop" or (kind == "auto" and not portable_forced()):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed") from None
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    if sys.platform == "win32":
        # The acceptor waits with add_reader(), which Windows' default proactor loop lacks.
        return asyncio.SelectorEventLoop
    return asyncio.new_event_loop


def tune_gc() -> None:
    """Keep the garbage collector off the request path of a process aserve owns.

    Everything alive once the app is loaded (modules, the app, its settings) is frozen out of
    collections, so a full collection walks only what requests allocate; and the young
    generation waits for 5,000 allocations, so fewer requests still in flight are promoted
    and collected over and over. An app that disabled the collector or set its own thresholds
    keeps them.
    """
    if not gc.isenabled():
        return
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young == _PYTHON_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def no_wakeup_preemption() -> None:
    """Schedule the calling thread as SCHED_BATCH (Linux): a CPU-bound thread that, when
    woken, waits for its turn instead of preempting the running thread.

    Every WSGI request hands work between the loop and a pool thread, and each hand-off wakes
    the other thread. A woken thread that preempts the waker at once only finds the GIL held
    and sleeps again: two context switches for nothing. On one CPU those were ~40% of the
    switches of the WSGI hello benchmark, and SCHED_BATCH raised it from 29,400 to 40,000
    req/s; a woken thread still runs at once on an idle CPU. Nothing else changes: the
    thread's priority and share of the CPU stay as they were. Elsewhere, nothing is done.
    """
    setscheduler = getattr(os, "sched_setscheduler", None)
    batch = getattr(os, "SCHED_BATCH", None)
    if setscheduler is None or batch is None:
        return
    with contextlib.suppress(OSError):  # e.g. a sandbox that filters the call
        setscheduler(0, batch, os.sched_param(0))
