"""System checks of the plugin's own set-up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.core.checks import CheckMessage, Warning


def check_installed_apps_order(
    *,
    app_configs: Sequence[AppConfig] | None,
    databases: Sequence[str] | None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """Django runs the runserver of the first app that has one: staticfiles' listed before
    aserve.django wins, and runserver is not aserve's (daphne checks the same)."""
    names = [config.name for config in apps.get_app_configs()]
    if "django.contrib.staticfiles" not in names:
        return []
    if names.index("django.contrib.staticfiles") < names.index("aserve.django"):
        return [
            Warning(
                "aserve.django is listed after django.contrib.staticfiles in INSTALLED_APPS, "
                "so `manage.py runserver` is staticfiles' and not aserve's.",
                hint="Move 'aserve.django' to the top of INSTALLED_APPS.",
                id="aserve.W001",
            )
        ]
    return []
