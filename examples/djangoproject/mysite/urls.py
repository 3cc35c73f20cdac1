"""The site's URLs: the notes app at the root, the admin under /admin/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("notes.urls")),
    path("admin/", admin.site.urls),
]
