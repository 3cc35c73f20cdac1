"""The notes pages and the demonstration views, at the root of the site."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "notes"

urlpatterns = [
    path("", views.note_list, name="list"),
    path("async/", views.hello_async, name="async"),
    path("stream/", views.stream, name="stream"),
    path("stream/sync/", views.stream_sync, name="stream-sync"),
    path("run-main/", views.run_main, name="run-main"),
    path("pid/", views.pid, name="pid"),
]
