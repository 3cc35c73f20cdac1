"""The Autobahn TestSuite's server cases (sections 1-7, 10, 12, 13) against an echo app served
by aserve, or by a peer for comparison, driven by the `kosoku` runner; prints the tally.

    pip install kosoku                 # the runner; not a test dependency
    .venv/bin/python benchmarks/autobahn.py                  # aserve, every case but 9.*
    .venv/bin/python benchmarks/autobahn.py --server uvicorn --server uvicorn-wsproto

Exit code 0 only when aserve (every server asked for) has no FAILED or UNCLEAN case and no
case whose close behaviour is anything but OK or INFORMATIONAL.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = "aserve.bench.apps:ws_echo"
HOST = "127.0.0.1"
# The Autobahn verdicts that are not a failure: NON-STRICT (a UTF-8 error found at the end of
# a message rather than at once) and INFORMATIONAL are the suite's own passes.
PASSING = frozenset(("OK", "NON-STRICT", "INFORMATIONAL"))
PASSING_CLOSE = frozenset(("OK", "INFORMATIONAL"))

_UVICORN = [sys.executable, "-m", "uvicorn", APP, "--log-level", "warning"]
SERVERS = {
    "aserve": [sys.executable, "-m", "aserve", APP, "--no-access-log", "--host", HOST],
    # uvicorn's default backend (as of 0.55, when websockets is installed): its sans-IO one.
    "uvicorn": _UVICORN,
    "uvicorn-legacy": [*_UVICORN, "--ws", "websockets"],
    "uvicorn-wsproto": [*_UVICORN, "--ws", "wsproto"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_accepting(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not accept connections in 30 s")


def run_suite(name: str, outdir: Path, parallelism: int, cases: list[str]) -> dict[str, dict]:  # type: ignore[type-arg]
    """Serve the echo app with `name`, run kosoku against it; its results by case."""
    kosoku = shutil.which("kosoku") or str(Path(sys.executable).parent / "kosoku")
    port = free_port()
    server = subprocess.Popen(
        [*SERVERS[name], "--port", str(port)], stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_accepting(port, server)
        selection = [arg for case in cases for arg in ("-i", case)] or ["-x", "9.*"]
        command = [kosoku, "-m", "fuzzingclient", *selection, "-p", str(parallelism)]
        subprocess.run([*command, "-o", str(outdir), f"{HOST}:{port}"], check=False)
    finally:
        server.terminate()
        server.wait(30)
    index = json.loads((outdir / "index.json").read_text())
    results: dict[str, dict] = {}  # type: ignore[type-arg]
    for agent_cases in index.values():
        results.update(agent_cases)
    return results


def tally(name: str, results: dict[str, dict]) -> bool:  # type: ignore[type-arg]
    """Print the counts and every case that did not pass; True when none failed."""
    behavior = collections.Counter(result["behavior"] for result in results.values())
    closing = collections.Counter(result["behaviorClose"] for result in results.values())
    bad = {
        case: result
        for case, result in results.items()
        if result["behavior"] not in PASSING or result["behaviorClose"] not in PASSING_CLOSE
    }
    print(f"\n{name}: {len(results)} cases")
    print("  behaviour:", ", ".join(f"{k} {v}" for k, v in sorted(behavior.items())))
    print("  close:    ", ", ".join(f"{k} {v}" for k, v in sorted(closing.items())))
    for case in sorted(bad, key=lambda c: [int(p) for p in c.split(".")]):
        result = bad[case]
        print(f"  {case}: behavior={result['behavior']} close={result['behaviorClose']}")
    return not bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--server", action="append", choices=sorted(SERVERS), default=[])
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--case", action="append", default=[], help="only these (globs)")
    parser.add_argument("--out", type=Path, default=None, help="keep the reports here")
    args = parser.parse_args()
    names = args.server or ["aserve"]
    passed = True
    with tempfile.TemporaryDirectory(prefix="autobahn-") as scratch:
        root = args.out or Path(scratch)
        for name in names:
            results = run_suite(name, root / name, args.parallelism, args.case)
            passed = tally(name, results) and passed
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
