"""`manage.py aserve`: runserver on aserve, for projects that keep Django's own runserver."""

from __future__ import annotations

from aserve.django.management.commands.runserver import Command as Runserver


class Command(Runserver):
    pass
