"""Notes in the admin."""

from __future__ import annotations

from django.contrib import admin

from .models import Note

# Options instead of a ModelAdmin subclass: django-stubs makes ModelAdmin generic, and
# ModelAdmin[Note] fails at runtime without django-stubs-ext's monkeypatch.
admin.site.register(Note, list_display=("title", "created"), search_fields=("title", "body"))
