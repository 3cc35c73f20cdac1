"""A note: what the list page shows and the admin edits."""

from __future__ import annotations

from datetime import datetime

from django.db import models


class Note(models.Model):
    # The annotations give each field's set and get types: without django-stubs' mypy plugin,
    # which infers them, mypy cannot.
    title: models.CharField[str, str] = models.CharField(max_length=200)
    body: models.TextField[str, str] = models.TextField(blank=True)
    created: models.DateTimeField[datetime, datetime] = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created",)

    def __str__(self) -> str:
        return self.title
