"""What `aserve-bench` shows and writes: the progress lines while it runs, one table per
scenario, the claims, the JSON document and (when matplotlib is installed) a PNG chart."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from aserve.bench.peers import ASERVE, CEILING
from aserve.bench.reload import ReloadRun
from aserve.bench.results import MemoryRun, ReloadSummary, Run, Summary
from aserve.bench.scenarios import Scenario
from aserve.bench.stats import interpolated
from aserve.bench.targets import Verdict

MiB = 1024 * 1024


class Progress:
    """One line per run on stderr: which run of how many, the time left, then its figures."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._run_started = self.started

    def _eta(self) -> str:
        if not self.done:
            return "?"
        left = (time.monotonic() - self.started) / self.done * max(0, self.total - self.done)
        return f"{int(left // 60)}:{int(left % 60):02d}"

    def begin(self, scenario: Scenario, server: str, round_no: int, waited: float) -> None:
        self._run_started = time.monotonic()
        number = f"{self.done + 1}/{self.total}"
        wait = f" (waited {waited:.0f}s for a quiet machine)" if waited >= 1 else ""
        self.stream.write(
            f"[{number:>7} ~{self._eta()} left] {scenario.name:<16} {server:<15} "
            f"round {round_no + 1}{wait} ... "
        )
        self.stream.flush()

    def end(self, outcome: Run | MemoryRun | ReloadRun, again: bool) -> None:
        if not again:
            self.done += 1
        seconds = time.monotonic() - self._run_started
        self.stream.write(f"{describe(outcome, again)} [{seconds:.0f}s]\n")
        self.stream.flush()


def describe(outcome: Run | MemoryRun | ReloadRun, again: bool = False) -> str:
    """A run's figures in one line."""
    if isinstance(outcome, ReloadRun):
        return _describe_reload(outcome)
    if outcome.error is not None:
        line = "FAILED: " + outcome.error.splitlines()[0][:150]
        return line + ", trying again" if again else line
    if isinstance(outcome, MemoryRun):
        parts = []
        for name, transfer in (("upload", outcome.upload), ("download", outcome.download)):
            if transfer.error is not None:
                parts.append(f"{name} failed")
            else:
                parts.append(
                    f"{name} {transfer.mib_per_s(outcome.size):,.0f} MiB/s "
                    f"+{transfer.rss_growth / MiB:.1f} MiB RSS"
                )
        return ", ".join(parts)
    result = outcome.result
    assert result is not None
    line = (
        f"{result.requests_per_s:>9,.0f} req/s  p50 {result.p50_ms:.2f} ms  "
        f"p99 {result.p99_ms:.2f} ms  errors {result.errors}"
    )
    if outcome.foreign_server_cpu or outcome.foreign_load_cpu:
        line += (
            f"  others took {outcome.foreign_server_cpu:.0%}/{outcome.foreign_load_cpu:.0%}"
            " of the server/load CPU"
        )
    if outcome.contended:
        line += "  CONTENDED, measuring again" if again else "  CONTENDED"
    return line


def _describe_reload(run: ReloadRun) -> str:
    # A run that failed on its fifth save still measured four: both are worth a line.
    latencies = sorted(run.latencies())
    parts = []
    if latencies:
        parts.append(
            f"{len(latencies)} saves, p50 {_number(interpolated(latencies, 0.5))} ms, "
            f"max {_number(latencies[-1])} ms, "
            f"refused {sum(e.refused for e in run.edits):,}, "
            f"errors {sum(e.errors + e.non_200 for e in run.edits)}"
        )
    if run.error is not None:
        parts.append("FAILED: " + run.error.splitlines()[0][:150])
    return "; ".join(parts) or "no save measured"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _errors(summary: Summary) -> str:
    if not summary.errors:
        return "0"
    kinds = ", ".join(f"{kind} {count}" for kind, count in summary.error_kinds.items())
    return f"{summary.errors} ({kinds})"


def _number(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def render(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            rules = ["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]
            lines.append("|" + "|".join(rules) + "|")
    return "\n".join(lines)


def load_table(scenario: Scenario, summaries: Sequence[Summary]) -> str:
    has_ceiling = any(s.server == CEILING for s in summaries)
    header = ["server", "runs", "req/s", "min-max", "req/CPU-s", "p50 ms", "p99 ms", "errors"]
    if scenario.payload:
        header.append("MiB/s")
    header += ["peak RSS MiB", "vs aserve"]
    if has_ceiling:
        header.append("of ceiling")
    rows = [header]
    failures: list[str] = []
    for s in summaries:
        if math.isnan(s.requests_per_s):
            rows.append([s.server, f"0/{s.runs}", "failed"] + ["-"] * (len(header) - 3))
            failures.append(f"{s.server} failed: {(s.error or 'no result').splitlines()[0]}")
            continue
        if s.error is not None:
            failures.append(f"{s.server}: {s.error.splitlines()[0]}")
        row = [
            s.server,
            f"{s.clean_runs}/{s.runs}",
            _number(s.requests_per_s),
            f"{_number(s.min_requests_per_s)}-{_number(s.max_requests_per_s)}",
            _number(s.requests_per_cpu_s),
            _number(s.p50_ms, 2),
            _number(s.p99_ms, 2),
            _errors(s),
        ]
        if scenario.payload:
            row.append(_number(s.requests_per_s * scenario.payload / MiB))
        row += [_number(s.peak_rss / MiB, 1), _ratio(s.vs_aserve)]
        if has_ceiling:
            row.append(_share(s.of_ceiling))
        rows.append(row)
    return "\n".join([render(rows), *failures])


def memory_table(runs: Sequence[MemoryRun]) -> str:
    rows = [
        [
            "server",
            "RSS before MiB",
            "upload MiB/s",
            "upload RSS growth MiB",
            "download MiB/s",
            "download RSS growth MiB",
        ]
    ]
    for run in runs:
        if run.error is not None:
            rows.append([run.server, f"failed: {run.error.splitlines()[0][:60]}", *["-"] * 4])
            continue
        row = [run.server, _number(run.rss_before / MiB, 1)]
        for transfer in (run.upload, run.download):
            if transfer.error is not None:
                row += [f"failed: {transfer.error}", "-"]
            else:
                row += [
                    _number(transfer.mib_per_s(run.size)),
                    _number(transfer.rss_growth / MiB, 1),
                ]
        rows.append(row)
    return render(rows)


def reload_table(summaries: Sequence[ReloadSummary]) -> str:
    """The reload scenario's table, as `benchmarks/reload_latency.py` has always printed it:
    latencies in ms over every save, and the requests that failed while the servers reloaded."""
    header = [
        "server", "edits", "p50 ms", "p90 ms", "max ms", "refused", "errors", "non-200",
        "missed", "start s", "other CPU", "p50 / aserve",
    ]  # fmt: skip
    rows = [header]
    failures: list[str] = []
    for s in summaries:
        if s.error is not None:
            failures.append(f"{s.server} failed: {s.error.splitlines()[0]}")
        rows.append(
            [
                s.server,
                str(s.edits),
                _number(s.p50_ms),
                _number(s.p90_ms),
                _number(s.max_ms),
                f"{s.refused:,}",
                str(s.errors),
                str(s.non_200),
                str(s.missed),
                _number(s.startup_s, 2),
                "-" if math.isnan(s.other_load) else f"{s.other_load:.0%}",
                _ratio(s.vs_aserve),
            ]
        )
    return "\n".join([render(rows), *failures])


def claims_table(verdicts: Sequence[Verdict]) -> str:
    header = ["target", "measured", "per CPU-s", "status"]
    return render([header] + [[v.label, v.measured, v.per_cpu, v.status] for v in verdicts])


def access_log_note(summaries: Sequence[Summary]) -> str | None:
    """What aserve's access log costs, from the aserve and aserve+log rows of one scenario."""
    by_name = {s.server: s for s in summaries}
    off, on = by_name.get(ASERVE), by_name.get("aserve+log")
    if off is None or on is None or math.isnan(off.requests_per_s + on.requests_per_s):
        return None
    cost_us = (1 / on.requests_per_s - 1 / off.requests_per_s) * 1e6
    return (
        f"aserve's access log: {on.requests_per_s:,.0f} req/s on, {off.requests_per_s:,.0f} off "
        f"({cost_us:+.1f} us per request)."
    )


def generator_note(generator: str, summaries: Mapping[str, Sequence[Summary]]) -> str:
    """What the load generator itself can do: its rate against the canned-response server."""
    ceilings = [
        s.requests_per_s
        for rows in summaries.values()
        for s in rows
        if s.server == CEILING and not math.isnan(s.requests_per_s)
    ]
    if not ceilings:
        return f"Load generator: {generator}; not measured against the canned-response server."
    best = max(ceilings)
    return (
        f"Load generator: {generator}. Against the canned-response server it reached "
        f"{best:,.0f} req/s: that is its own ceiling on this machine, so a server within ~10% "
        "of that figure is limited by the generator, not by itself."
    )


def _jsonable(value: Any) -> Any:
    """NaN is not JSON: write null instead; bytes as text."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(_jsonable(dict(document)), indent=2) + "\n")


def run_record(run: Run) -> dict[str, Any]:
    return {**asdict(run), "requests_per_cpu_s": run.requests_per_cpu_s}


def chart_available() -> bool:
    """Whether matplotlib, which draws the chart, can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def write_chart(
    path: Path, scenarios: Sequence[Scenario], summaries: Mapping[str, Sequence[Summary]]
) -> bool:
    """A bar chart of requests/s per scenario (aserve highlighted); False when matplotlib is
    not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [
        s
        for s in scenarios
        if any(not math.isnan(x.requests_per_s) for x in summaries.get(s.name, ()))
    ]
    if not shown:
        return False
    columns = 2 if len(shown) > 1 else 1
    lines = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(6.5 * columns, 3.2 * lines), squeeze=False)
    for index, scenario in enumerate(shown):
        ax = axes[index // columns][index % columns]
        rows = [s for s in summaries[scenario.name] if not math.isnan(s.requests_per_s)]
        names = [s.server for s in rows][::-1]
        values = [s.requests_per_s for s in rows][::-1]
        colours = [
            "#d62728" if name == ASERVE else "#7f7f7f" if name == CEILING else "#1f77b4"
            for name in names
        ]
        ax.barh(names, values, color=colours)
        ax.set_title(scenario.title, fontsize=9)
        ax.set_xlabel("requests/s")
        ax.tick_params(labelsize=8)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:,.0f}", va="center", fontsize=7)
        ax.set_xlim(0, max(values) * 1.2)
    for index in range(len(shown), lines * columns):
        axes[index // columns][index % columns].axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
