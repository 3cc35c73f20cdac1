"""Django's settings for the tests that load or serve its handlers: configured once per process,
by whichever test comes first; each overrides what it relies on (ROOT_URLCONF, ALLOWED_HOSTS)."""

from __future__ import annotations


def configure_django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="aserve-tests-only",
            DEBUG=False,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            DATABASES={},
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
    django.setup()
