"""A/B of server command lines under wrk: alternated rounds, medians of req/s and server CPU.

    python benchmarks/ab.py --rounds 3 \
        'before=PYTHONPATH=/tmp/aserve-before python -m aserve aserve.bench.apps:hello_wsgi' \
        'after=python -m aserve aserve.bench.apps:hello_wsgi'

Each variant is `LABEL=[NAME=VALUE ...] COMMAND`; `{port}` in COMMAND is replaced by a free
port, else `--host 127.0.0.1 --port PORT` is appended. The server runs on CPU 0 and wrk on
CPU 1. The figure that moves least on a shared machine is the server's CPU time per request
(user + system of every thread of the process started, not of processes it forks), read from
/proc; context switches per request show hand-offs between threads.
Run from a directory other than the checkout when comparing checkouts with PYTHONPATH:
`python -m` puts the current directory first on sys.path.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Variant:
    label: str
    env: dict[str, str]
    argv: list[str]
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    switches: list[float] = field(default_factory=list)


def parse_variant(spec: str) -> Variant:
    label, sep, rest = spec.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=COMMAND, got {spec!r}")
    words = shlex.split(rest)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if not words:
        raise argparse.ArgumentTypeError(f"{label}: no command")
    if words[0] == "python":
        words[0] = sys.executable
    return Variant(label, env, words)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s") from None
            time.sleep(0.05)


def process_counters(pid: int) -> tuple[int, int]:
    """CPU clock ticks (user + system) and context switches of every thread of `pid`."""
    ticks = switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(stat[11]) + int(stat[12])
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                switches += int(line.split()[1])
    return ticks, switches


def wrk(url: str, connections: int, seconds: float) -> str:
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", url]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def measure(variant: Variant, args: argparse.Namespace) -> None:
    port = free_port()
    argv = [word.replace("{port}", str(port)) for word in variant.argv]
    if not any("{port}" in word for word in variant.argv):
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        ["taskset", "-c", "0", *argv],
        env={**os.environ, **variant.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        url = f"http://127.0.0.1:{port}{args.path}"
        wrk(url, args.connections, 1.0)  # warm-up
        ticks0, switches0 = process_counters(server.pid)
        output = wrk(url, args.connections, args.duration)
        ticks1, switches1 = process_counters(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise SystemExit(f"{variant.label}: no rate in wrk's output:\n{output}")
    rate = float(found.group(1))
    requests = rate * args.duration
    tick = os.sysconf("SC_CLK_TCK")
    variant.rates.append(rate)
    variant.cpu_us.append((ticks1 - ticks0) / tick / requests * 1e6)
    variant.switches.append((switches1 - switches0) / requests)
    errors = re.search(r"Socket errors:.*|Non-2xx.*", output)
    print(
        f"  {variant.label:<14} {rate:>10,.0f} req/s {variant.cpu_us[-1]:>8.1f} CPU-us/req "
        f"{variant.switches[-1]:>6.2f} switches/req  {errors.group(0) if errors else ''}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="LABEL=COMMAND")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--path", default="/", help="request target, e.g. /?size=1048576")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        parser.error("needs wrk and taskset (apt-get install wrk util-linux)")
    variants: list[Variant] = args.variants
    for index in range(args.rounds):
        print(f"round {index + 1}/{args.rounds}", flush=True)
        start = index % len(variants)  # rotate who goes first
        for variant in variants[start:] + variants[:start]:
            measure(variant, args)
    print("medians:")
    first = statistics.median(variants[0].rates)
    for variant in variants:
        rate = statistics.median(variant.rates)
        print(
            f"  {variant.label:<14} {rate:>10,.0f} req/s ({rate / first:.2f}x) "
            f"{statistics.median(variant.cpu_us):>8.1f} CPU-us/req "
            f"{statistics.median(variant.switches):>6.2f} switches/req"
        )


if __name__ == "__main__":
    main()
