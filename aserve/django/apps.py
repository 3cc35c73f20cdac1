"""The Django app that brings aserve's runserver."""

from __future__ import annotations

from django.apps import AppConfig


class AserveConfig(AppConfig):
    name = "aserve.django"
    label = "aserve"
    verbose_name = "aserve"
