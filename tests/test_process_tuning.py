"""What aserve changes in a process it owns: the garbage collector's set-up and the scheduling
policy of the WSGI pool threads (see `aserve.process.tune_gc` and `aserve.runners.wsgi`)."""

from __future__ import annotations

import gc
import json
import os
from typing import Any

import pytest

from aserve.process import GC_YOUNG_THRESHOLD
from tests.support.apps import wsgi_apps
from tests.support.client import http_get
from tests.support.procs import ServerProcess
from tests.support.servers import running

linux_only = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is a Linux scheduling policy"
)


def runtime_of(*args: str) -> dict[str, Any]:
    """The /runtime report of `aserve tests.support.apps...:app ARGS` run as a child process."""
    with ServerProcess(*args, "--port", "0", "--no-access-log") as process:
        status, body = http_get(process.wait_listening(), "/runtime")
    assert status == 200, body
    state: dict[str, Any] = json.loads(body)
    return state


def test_cli_worker_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    state = runtime_of("tests.support.apps.wsgi_apps:app")
    _, middle, old = gc.get_threshold()  # this process keeps Python's defaults
    assert state["gc_threshold"] == [GC_YOUNG_THRESHOLD, middle, old]
    assert state["gc_frozen"] > 1000  # the modules and the app at least
    assert state["gc_enabled"] is True


def test_no_tune_gc_leaves_the_collector_alone() -> None:
    state = runtime_of("tests.support.apps.wsgi_apps:app", "--no-tune-gc")
    assert state["gc_threshold"] == list(gc.get_threshold())
    assert state["gc_frozen"] == 0


def test_app_that_sets_its_own_thresholds_keeps_them() -> None:
    state = runtime_of("tests.support.apps.own_gc:app")
    assert state["gc_threshold"] == [1234, 5, 6]
    assert state["gc_frozen"] > 1000


def test_background_server_leaves_the_host_process_collector_alone() -> None:
    # A `Server` started on a thread lives in someone else's process (a test suite, a
    # program): freezing its objects could keep their garbage forever.
    before = gc.get_threshold(), gc.get_freeze_count()
    with running(wsgi_apps.app) as server:
        status, body = http_get(server.port, "/runtime")
    assert status == 200
    state = json.loads(body)
    assert (tuple(state["gc_threshold"]), state["gc_frozen"]) == before
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


@linux_only
def test_wsgi_pool_threads_are_sched_batch_and_the_caller_is_not() -> None:
    with running(wsgi_apps.app) as server:
        status, body = http_get(server.port, "/runtime")
    assert status == 200
    assert json.loads(body)["sched_batch"] is True
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the thread that started the server


@linux_only
def test_cli_wsgi_threads_are_sched_batch() -> None:
    assert runtime_of("tests.support.apps.wsgi_apps:app")["sched_batch"] is True
