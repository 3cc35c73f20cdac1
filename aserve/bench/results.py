"""What one benchmark run records: each measured run, each memory check, each reload run, and
the per-server summaries (medians over rounds, uncontended runs preferred; latency percentiles
over every save for the reload scenario) that the report shows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from aserve.bench.loadgen import LoadResult
from aserve.bench.peers import ASERVE, CEILING
from aserve.bench.reload import ReloadRun
from aserve.bench.stats import interpolated, median, ratio


@dataclass
class Run:
    """One server under one scenario's load for one round; `error` when it could not be."""

    scenario: str
    server: str
    round: int
    result: LoadResult | None = None
    error: str | None = None
    # CPU seconds of the server's process tree during the measured run, all threads.
    server_cpu_s: float = 0.0
    # VmHWM summed over the server's processes at the end of the run, in bytes.
    peak_rss: int = 0
    # Shares of the server's and the generator's CPUs that went to other processes while
    # measuring; above the limit the run is contended and measured again.
    foreign_server_cpu: float = 0.0
    foreign_load_cpu: float = 0.0
    contended: bool = False

    @property
    def requests_per_cpu_s(self) -> float:
        if self.result is None or not self.server_cpu_s:
            return math.nan
        return self.result.requests / self.server_cpu_s


@dataclass
class Transfer:
    """One 1 GiB request or response: how long it took and how much the server's RSS grew."""

    seconds: float = math.nan
    rss_growth: int = 0
    error: str | None = None

    def mib_per_s(self, size: int) -> float:
        if self.error is not None or not self.seconds or math.isnan(self.seconds):
            return math.nan
        return size / self.seconds / (1024 * 1024)


@dataclass
class MemoryRun:
    scenario: str
    server: str
    size: int
    upload: Transfer = field(default_factory=Transfer)
    download: Transfer = field(default_factory=Transfer)
    # RSS of the server's processes once started, before any transfer.
    rss_before: int = 0
    error: str | None = None


@dataclass
class Summary:
    scenario: str
    server: str
    runs: int
    clean_runs: int
    requests_per_s: float = math.nan
    min_requests_per_s: float = math.nan
    max_requests_per_s: float = math.nan
    requests_per_cpu_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    errors: int = 0
    # The errors by kind: non-2xx/3xx responses and socket errors (connect, read, ...).
    error_kinds: dict[str, int] = field(default_factory=dict)
    peak_rss: int = 0
    # This server's requests/s divided by aserve's, and by the ceiling's, in the same scenario.
    vs_aserve: float | None = None
    of_ceiling: float | None = None
    error: str | None = None
    rounds: list[float] = field(default_factory=list)


def summarise(scenario: str, servers: Sequence[str], runs: Sequence[Run]) -> list[Summary]:
    """One summary per server of `scenario` in `servers` order: medians over its uncontended
    runs when it has any, else over all; errors summed over every run."""
    summaries: list[Summary] = []
    for server in servers:
        own = [r for r in runs if r.scenario == scenario and r.server == server]
        if not own:
            continue
        measured = [r for r in own if r.result is not None]
        clean = [r for r in measured if not r.contended]
        chosen = clean or measured
        summary = Summary(scenario, server, runs=len(own), clean_runs=len(clean))
        if not chosen:
            summary.error = next((r.error for r in own if r.error), "not measured")
            summaries.append(summary)
            continue
        results = [r.result for r in chosen if r.result is not None]
        rps = [r.requests_per_s for r in results]
        summary.requests_per_s = median(rps)
        summary.min_requests_per_s = min(rps)
        summary.max_requests_per_s = max(rps)
        summary.requests_per_cpu_s = median(r.requests_per_cpu_s for r in chosen)
        summary.p50_ms = median(r.p50_ms for r in results)
        summary.p99_ms = median(r.p99_ms for r in results)
        for result in (r.result for r in measured if r.result is not None):
            summary.errors += result.errors
            kinds = {"non-2xx/3xx": result.non_2xx_3xx, **result.socket_errors}
            for kind, count in kinds.items():
                if count:
                    summary.error_kinds[kind] = summary.error_kinds.get(kind, 0) + count
        summary.peak_rss = max(r.peak_rss for r in chosen)
        # Failed attempts that were measured again are in the JSON, not in the table.
        summary.error = next((r.error for r in measured if r.error), None)
        summary.rounds = [r.result.requests_per_s for r in measured if r.result is not None]
        summaries.append(summary)
    by_name = {s.server: s for s in summaries}
    mine = by_name.get(ASERVE)
    ceiling = by_name.get(CEILING)
    for summary in summaries:
        summary.vs_aserve = ratio(summary.requests_per_s, mine.requests_per_s if mine else None)
        summary.of_ceiling = ratio(
            summary.requests_per_s, ceiling.requests_per_s if ceiling else None
        )
    return summaries


@dataclass
class ReloadSummary:
    """One server's saves in the reload scenario, pooled over its rounds: latencies in ms from
    the save to the new version's answer, and what failed on the way."""

    scenario: str
    server: str
    runs: int
    # Saves the new version answered; `missed` never did within the edit timeout.
    edits: int = 0
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    max_ms: float = math.nan
    mean_ms: float = math.nan
    refused: int = 0
    errors: int = 0
    non_200: int = 0
    missed: int = 0
    edits_with_refused: int = 0
    # From launch to the first answer of version 0 (median over rounds).
    startup_s: float = math.nan
    # The median over saves of the machine's share that others used (see `reload.Edit`).
    other_load: float = math.nan
    # This server's p50 divided by aserve's: above 1 it is slower to show a save.
    vs_aserve: float | None = None
    error: str | None = None


def summarise_reload(
    scenario: str, servers: Sequence[str], runs: Sequence[ReloadRun]
) -> list[ReloadSummary]:
    """One summary per server of `scenario` that ran, in `servers` order; the saves of all its
    rounds pooled, a failed round's included up to its failure."""
    summaries: list[ReloadSummary] = []
    for server in servers:
        own = [r for r in runs if r.scenario == scenario and r.server == server]
        if not own:
            continue
        edits = [edit for run in own for edit in run.edits]
        latencies = sorted(e.latency_ms for e in edits if e.latency_ms is not None)
        summary = ReloadSummary(scenario, server, runs=len(own), edits=len(latencies))
        if latencies:
            summary.p50_ms = interpolated(latencies, 0.5)
            summary.p90_ms = interpolated(latencies, 0.9)
            summary.max_ms = latencies[-1]
            summary.mean_ms = sum(latencies) / len(latencies)
        summary.refused = sum(e.refused for e in edits)
        summary.errors = sum(e.errors for e in edits)
        summary.non_200 = sum(e.non_200 for e in edits)
        summary.missed = sum(1 for e in edits if e.latency_ms is None)
        summary.edits_with_refused = sum(1 for e in edits if e.refused)
        summary.startup_s = median(r.startup_s for r in own if r.startup_s is not None)
        summary.other_load = median(e.other_load for e in edits)
        summary.error = next((r.error for r in own if r.error), None)
        summaries.append(summary)
    mine = next((s for s in summaries if s.server == ASERVE), None)
    for summary in summaries:
        summary.vs_aserve = ratio(summary.p50_ms, mine.p50_ms if mine else None)
    return summaries


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    memory: list[MemoryRun] = field(default_factory=list)
    reload: list[ReloadRun] = field(default_factory=list)
    # Django's WSGIHandler called in a loop with no server: the Django scenario's ceiling.
    django_in_process: float | None = None
