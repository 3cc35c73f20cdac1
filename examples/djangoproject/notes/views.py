"""The notes pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .models import Note


def note_list(request: HttpRequest) -> HttpResponse:
    return render(request, "notes/note_list.html", {"notes": Note.objects.all()})
