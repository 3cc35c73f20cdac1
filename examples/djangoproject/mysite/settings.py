"""Settings for the example site: development only (DEBUG on, a public SECRET_KEY, SQLite)."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# DEVELOPMENT ONLY: this key is published with the example, so anything signed with it can be
# forged. A real deployment reads its own secret from the environment.
SECRET_KEY = "django-insecure-aserve-example-development-key-do-not-deploy"

DEBUG = True

ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    # First, so that its runserver command is found before staticfiles' and Django's own.
    "aserve.django",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "notes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "mysite.wsgi.application"

# With aserve.django, runserver serves ASGI_APPLICATION when it is set and WSGI_APPLICATION
# otherwise. It stays unset so that the default is the WSGI path most projects take; run with
# EXAMPLE_ASGI_APPLICATION=mysite.asgi.application to serve the same site over ASGI, where the
# async views run on the server's event loop instead of a thread of their own.
if "EXAMPLE_ASGI_APPLICATION" in os.environ:
    ASGI_APPLICATION = os.environ["EXAMPLE_ASGI_APPLICATION"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TIME_ZONE = "UTC"
USE_TZ = True

STATIC_URL = "static/"
