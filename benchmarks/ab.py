"""A/B of server command lines under wrk: alternated rounds, medians of req/s and server CPU.

    python benchmarks/ab.py --rounds 3 \
        'before=PYTHONPATH=/tmp/aserve-before python -m aserve aserve.bench.apps:hello_wsgi' \
        'after=python -m aserve aserve.bench.apps:hello_wsgi'

Each variant is `LABEL=[NAME=VALUE ...] COMMAND`; `{port}` in COMMAND is replaced by a free
port, else `--host 127.0.0.1 --port PORT` is appended. The server runs on CPU 0 and wrk on
CPU 1. The figure that moves least on a shared machine is the server's CPU time per request
(user + system of every thread of the server and of the worker processes it forks), read from
/proc; context switches per request show hand-offs between threads.
`--post BYTES` makes each request an upload of BYTES, for an upload sink such as
`aserve.bench.apps:transfer_wsgi`.
`--https LABEL` sends that variant's requests over TLS (keep-alive: one handshake per
connection). Run from a directory other than the checkout when comparing checkouts with PYTHONPATH:
`python -m` puts the current directory first on sys.path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aserve.bench.loadgen import Request, wrk_script
from aserve.bench.runner import free_port, wait_accepting
from aserve.bench.system import pinned, process_tree, tree_cpu_s


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


def switches(pid: int) -> int:
    """Context switches, voluntary or not, of every thread of `pid` and its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{member}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                        total += int(line.split()[1])
    return total


def wrk(
    url: str, connections: int, seconds: float, cpu: int | None = 1, script: str | None = None
) -> str:
    options = ["-s", script] if script else []
    command = pinned(cpu, ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", *options, url])
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def post_script(size: int) -> str:
    """A wrk script file that POSTs `size` bytes per request, as aserve-bench's upload does
    (wrk adds the Content-Length)."""
    text = wrk_script(Request("POST", body_size=size))
    assert text is not None
    handle, path = tempfile.mkstemp(prefix="ab-post-", suffix=".lua")
    with os.fdopen(handle, "w") as script:
        script.write(text)
    return path


def measure(variant: Variant, args: argparse.Namespace) -> None:
    port = free_port()
    argv = [word.replace("{port}", str(port)) for word in variant.argv]
    if not any("{port}" in word for word in variant.argv):
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        pinned(None if args.unpinned else 0, argv),
        env={**os.environ, **variant.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_accepting(port, server)
        scheme = "https" if variant.label in args.https else "http"
        url = f"{scheme}://127.0.0.1:{port}{args.path}"
        client_cpu = None if args.unpinned else 1
        wrk(url, args.connections, 1.0, client_cpu, args.script)  # warm-up
        cpu0, switches0 = tree_cpu_s(server.pid), switches(server.pid)
        output = wrk(url, args.connections, args.duration, client_cpu, args.script)
        cpu1, switches1 = tree_cpu_s(server.pid), switches(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise SystemExit(f"{variant.label}: no rate in wrk's output:\n{output}")
    rate = float(found.group(1))
    requests = rate * args.duration
    variant.rates.append(rate)
    variant.cpu_us.append((cpu1 - cpu0) / requests * 1e6)
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
    parser.add_argument(
        "--unpinned",
        action="store_true",
        help="pin neither the server (CPU 0) nor wrk (CPU 1): servers with several processes "
        "may then use both CPUs, which wrk shares with them",
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--path", default="/", help="request target, e.g. /?size=1048576")
    parser.add_argument(
        "--https",
        action="append",
        default=[],
        metavar="LABEL",
        help="the variant LABEL serves HTTPS (repeatable); wrk does not verify certificates",
    )
    parser.add_argument(
        "--post",
        type=int,
        default=0,
        metavar="BYTES",
        help="POST a body of BYTES per request (aserve.bench.apps:transfer_wsgi reads it "
        "through wsgi.input and answers its length)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("needs wrk (apt-get install wrk)")
    args.script = post_script(args.post) if args.post > 0 else None
    variants: list[Variant] = args.variants
    for index in range(args.rounds):
        print(f"round {index + 1}/{args.rounds}", flush=True)
        start = index % len(variants)  # rotate who goes first
        for variant in variants[start:] + variants[:start]:
            measure(variant, args)
    if args.script:
        os.unlink(args.script)
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
