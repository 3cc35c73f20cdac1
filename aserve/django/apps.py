"""The Django app that brings aserve's runserver."""

from __future__ import annotations

from django.apps import AppConfig


class AserveConfig(AppConfig):
    name = "aserve.django"
    label = "aserve"
    verbose_name = "aserve"

    def ready(self) -> None:
        from django.core import checks

        from aserve.django.checks import check_installed_apps_order

        checks.register(check_installed_apps_order)
