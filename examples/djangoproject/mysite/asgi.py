"""The ASGI application: `aserve mysite.asgi:application`, or `manage.py runserver` when
ASGI_APPLICATION names it."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_asgi_application()
