"""aserve's speed claims (issue 16's targets, which raised issue 4's, and the reload claims)
and whether one benchmark run meets them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from aserve.bench.peers import ASERVE
from aserve.bench.results import MemoryRun, ReloadSummary, Summary
from aserve.bench.stats import ratio

MiB = 1024 * 1024
Status = Literal["met", "NOT MET", "n/a"]


@dataclass(frozen=True)
class Speedup:
    """aserve's requests/s at least `factor` times `peer`'s in `scenario`."""

    scenario: str
    peer: str
    factor: float
    label: str


@dataclass(frozen=True)
class NoErrors:
    """aserve answered every request of `scenario`: no socket errors, timeouts or non-2xx."""

    scenario: str
    label: str


@dataclass(frozen=True)
class MemoryBound:
    """aserve's RSS grew by at most `limit` bytes during the `direction` transfer."""

    scenario: str
    direction: Literal["upload", "download"]
    limit: int
    label: str


@dataclass(frozen=True)
class SoonerReload:
    """aserve's median save-to-answer latency at most 1/`factor` of `peer`'s."""

    scenario: str
    peer: str
    factor: float
    label: str


@dataclass(frozen=True)
class CleanReload:
    """No request refused, failed or missed by aserve while it reloaded."""

    scenario: str
    label: str


Claim = Speedup | NoErrors | MemoryBound | SoonerReload | CleanReload

CLAIMS: tuple[Claim, ...] = (
    Speedup("hello-wsgi", "granian", 1.0, "WSGI hello: aserve >= 1x granian"),
    Speedup("hello-wsgi", "waitress", 5.0, "WSGI hello: aserve >= 5x waitress (4 threads)"),
    Speedup("hello-wsgi", "uvicorn+a2wsgi", 5.0, "WSGI hello: aserve >= 5x uvicorn + a2wsgi"),
    Speedup("hello-asgi", "uvicorn", 1.5, "ASGI hello: aserve >= 1.5x uvicorn"),
    Speedup("django", "granian", 1.35, "Django view: aserve >= 1.35x granian WSGI"),
    Speedup("django", "runserver", 5.0, "Django view: aserve >= 5x runserver"),
    Speedup("stream-1mib", "granian", 1.0, "1 MiB streamed response: aserve >= 1x granian"),
    Speedup("upload-16mib", "granian", 0.8, "16 MiB upload: aserve >= 0.8x granian"),
    NoErrors("hello-wsgi-c1000", "1000 connections: aserve has no socket errors or timeouts"),
    Speedup("hello-wsgi-c1000", "granian", 1.0, "1000 connections: aserve >= 1x granian"),
    Speedup("hello-wsgi-c1000", "waitress", 3.0, "1000 connections: aserve >= 3x waitress"),
    MemoryBound("memory-1gib", "upload", 32 * MiB, "1 GiB upload: aserve RSS growth <= 32 MiB"),
    MemoryBound("memory-1gib", "download", 32 * MiB, "1 GiB response: aserve RSS growth <= 32 MiB"),
    SoonerReload("reload", "runserver", 4.0, "Reload: aserve's p50 <= 1/4 of runserver's"),
    CleanReload("reload", "Reload: aserve refuses and fails no request"),
)


@dataclass(frozen=True)
class Verdict:
    label: str
    status: Status
    measured: str
    # The same ratio in requests per CPU-second of the server: what it would be if both had
    # had their CPU to themselves (context on a shared machine; the status uses req/s).
    per_cpu: str = "-"


def _find(summaries: Sequence[Summary], server: str) -> Summary | None:
    found = next((s for s in summaries if s.server == server), None)
    if found is None or math.isnan(found.requests_per_s):
        return None
    return found


def _reload_verdict(claim: SoonerReload | CleanReload, rows: Sequence[ReloadSummary]) -> Verdict:
    mine = next((r for r in rows if r.scenario == claim.scenario and r.server == ASERVE), None)
    if mine is None or not mine.edits:
        return Verdict(claim.label, "n/a", "not measured")
    if isinstance(claim, CleanReload):
        failed = mine.refused + mine.errors + mine.non_200 + mine.missed
        status: Status = "met" if failed == 0 else "NOT MET"
        return Verdict(claim.label, status, f"{failed} failed of {mine.edits} saves")
    peer = next((r for r in rows if r.scenario == claim.scenario and r.server == claim.peer), None)
    sooner = ratio(peer.p50_ms if peer else None, mine.p50_ms)
    if sooner is None:
        return Verdict(claim.label, "n/a", "not measured")
    return Verdict(claim.label, "met" if sooner >= claim.factor else "NOT MET", f"{sooner:.2f}x")


def evaluate(
    summaries: Mapping[str, Sequence[Summary]],
    memory: Sequence[MemoryRun],
    reload: Sequence[ReloadSummary] = (),
) -> list[Verdict]:
    """A verdict for every claim; `n/a` when its scenario or peer was not measured."""
    verdicts: list[Verdict] = []
    for claim in CLAIMS:
        if isinstance(claim, SoonerReload | CleanReload):
            verdicts.append(_reload_verdict(claim, reload))
            continue
        if isinstance(claim, MemoryBound):
            mine = next(
                (m for m in memory if m.scenario == claim.scenario and m.server == ASERVE), None
            )
            if mine is None:
                verdicts.append(Verdict(claim.label, "n/a", "not measured"))
                continue
            transfer = mine.upload if claim.direction == "upload" else mine.download
            if transfer.error is not None:
                verdicts.append(Verdict(claim.label, "NOT MET", transfer.error))
                continue
            growth = transfer.rss_growth
            status: Status = "met" if growth <= claim.limit else "NOT MET"
            verdicts.append(Verdict(claim.label, status, f"{growth / MiB:.1f} MiB"))
            continue
        rows = summaries.get(claim.scenario, ())
        aserve = _find(rows, ASERVE)
        if isinstance(claim, NoErrors):
            if aserve is None:
                verdicts.append(Verdict(claim.label, "n/a", "not measured"))
            else:
                status = "met" if aserve.errors == 0 else "NOT MET"
                verdicts.append(Verdict(claim.label, status, f"{aserve.errors} errors"))
            continue
        peer = _find(rows, claim.peer)
        if aserve is None or peer is None:
            verdicts.append(Verdict(claim.label, "n/a", "not measured"))
            continue
        speedup = aserve.requests_per_s / peer.requests_per_s
        status = "met" if speedup >= claim.factor else "NOT MET"
        per_cpu = ratio(aserve.requests_per_cpu_s, peer.requests_per_cpu_s)
        cpu_text = "-" if per_cpu is None else f"{per_cpu:.2f}x"
        verdicts.append(Verdict(claim.label, status, f"{speedup:.2f}x", cpu_text))
    return verdicts
