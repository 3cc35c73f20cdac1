"""The notes app: one model, browsed at / and edited in the admin."""

from __future__ import annotations

from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = "notes"
