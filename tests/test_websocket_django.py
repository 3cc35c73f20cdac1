"""`manage.py runserver` on aserve serves a Channels project's WebSocket consumers: the example
project with ASGI_APPLICATION set to a ProtocolTypeRouter (Channels' own runserver needs daphne
for that), pages and static files still served beside them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import websockets

from tests.support.client import http_get
from tests.support.djangoproject import Runserver, environment, migrated_copy

ROUTING = '''
"""A Channels router in front of Django: an echo consumer that names the user's room."""

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path

django_application = get_asgi_application()


class Echo(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=f"{self.room}: {text_data}")


application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": URLRouter([path("ws/<str:room>/", Echo.as_asgi())]),
    }
)
'''

SETTINGS = """
from mysite.settings import *  # noqa: F403

ASGI_APPLICATION = "mysite.routing.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
"""


async def test_runserver_serves_channels_consumers(tmp_path: Path) -> None:
    project = migrated_copy(tmp_path / "site")
    (project / "mysite" / "routing.py").write_text(textwrap.dedent(ROUTING))
    (project / "mysite" / "channels_settings.py").write_text(SETTINGS)
    env = environment(DJANGO_SETTINGS_MODULE="mysite.channels_settings")
    with Runserver(project, "127.0.0.1:0", "--noreload", env=env) as server:
        port = server.wait_started()
        server.wait_for(r"\(ASGI\)")
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/lobby/", open_timeout=10) as ws:
            await ws.send("hello")
            assert await ws.recv() == "lobby: hello"
        status, _ = http_get(port, "/static/notes/style.css")
        assert status == 200
        status, _ = http_get(port, "/")
        assert status == 200
        # runserver's access line for the WebSocket, on django.server as for pages.
        server.wait_for(r'"GET /ws/lobby/ HTTP/1\.1" 101 ')
