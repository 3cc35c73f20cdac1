"""Round trips of the reload IPC: SOCK_SEQPACKET packets against length-prefixed frames on a
stream socket (the framing of macOS and Windows, ASERVE_PORTABLE=1), both ways.

    python benchmarks/ipc_roundtrip.py --trips 20000

Down: the supervisor's end sends `Changed` and the worker's answers `Handled` (a blocking
recv each way, in two processes). Up: a worker's `Ready` with Django's 640 module names, and a
`Stop` back. Medians of per-trip microseconds over alternated rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from aserve.process import PORTABLE_ENV
from aserve.reload.ipc import (
    WORKER_LINK,
    Changed,
    Channel,
    FromWorker,
    Handled,
    Ready,
    Stop,
    ToWorker,
    channel_pair,
)

READY = Ready(modules=tuple(f"django.contrib.module_{i:03d}" for i in range(640)))


def _worker(end: Channel[ToWorker, FromWorker], trips: int, reply: FromWorker) -> None:
    for _ in range(trips):
        if end.recv() is None:
            return
        end.send(reply)


def _round(stream: bool, trips: int, size: str) -> float:
    if stream:
        os.environ[PORTABLE_ENV] = "1"
    else:
        os.environ.pop(PORTABLE_ENV, None)
    ours, theirs = channel_pair(WORKER_LINK)
    down: ToWorker = Changed(("/srv/site/app.py",)) if size == "small" else Stop()
    reply: FromWorker = Handled(all=True) if size == "small" else READY
    pid = os.fork()
    if pid == 0:
        ours.close()
        _worker(theirs, trips + 1, reply)
        os._exit(0)
    theirs.close()
    ours.send(down)  # warm up
    ours.recv()
    started = time.perf_counter()
    for _ in range(trips):
        ours.send(down)
        ours.recv()
    elapsed = time.perf_counter() - started
    ours.close()
    os.waitpid(pid, 0)
    return elapsed / trips * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for size, label in (("small", "Changed -> Handled"), ("large", "Stop -> Ready (640 names)")):
        results: dict[str, list[float]] = {"seqpacket": [], "stream": []}
        for _ in range(args.rounds):
            for name, run in (("seqpacket", False), ("stream", True)):
                results[name].append(_round(run, args.trips, size))
        packet = statistics.median(results["seqpacket"])
        stream = statistics.median(results["stream"])
        print(
            f"{label:28} seqpacket {packet:6.1f} us   stream {stream:6.1f} us   "
            f"stream/seqpacket {stream / packet:.2f}"
        )


if __name__ == "__main__":
    main()
