"""WebSocket apps of real frameworks served by aserve end to end: a Starlette WebSocketRoute
(and its denial response), a Django Channels AsyncWebsocketConsumer behind a
ProtocolTypeRouter, talking through the in-memory channel layer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus

from tests.support.django_config import configure_django
from tests.support.servers import ServeFactory


def dial(port: int, path: str, **options: Any) -> websockets.connect:
    return websockets.connect(f"ws://127.0.0.1:{port}{path}", open_timeout=5, **options)


def starlette_app() -> Starlette:
    async def shout(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="shout.v1")
        async for text in websocket.iter_text():
            await websocket.send_text(text.upper())
        # iter_text ends at the client's close.

    async def deny(websocket: WebSocket) -> None:
        await websocket.send_denial_response(PlainTextResponse("members only", 401))

    async def refuse(websocket: WebSocket) -> None:
        await websocket.close(code=1008)

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    return Starlette(
        routes=[
            Route("/", home),
            WebSocketRoute("/shout", shout),
            WebSocketRoute("/deny", deny),
            WebSocketRoute("/refuse", refuse),
        ]
    )


async def test_starlette_websocket_route(serve: ServeFactory) -> None:
    server = serve(starlette_app())
    async with dial(server.port, "/shout", subprotocols=["shout.v1"]) as ws:
        assert ws.subprotocol == "shout.v1"
        await ws.send("hello")
        assert await ws.recv() == "HELLO"
    with pytest.raises(InvalidStatus) as denied:
        async with dial(server.port, "/deny"):
            pass
    assert denied.value.response.status_code == 401
    assert denied.value.response.body == b"members only"
    with pytest.raises(InvalidStatus) as refused:
        async with dial(server.port, "/refuse"):
            pass
    assert refused.value.response.status_code == 403


async def test_channels_consumer_through_the_in_memory_layer(serve: ServeFactory) -> None:
    configure_django()
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.core.asgi import get_asgi_application
    from django.test.utils import override_settings
    from django.urls import path

    class Chat(AsyncWebsocketConsumer):  # type: ignore[misc]
        async def connect(self) -> None:
            self.room = "room-" + self.scope["url_route"]["kwargs"]["room"]
            await self.channel_layer.group_add(self.room, self.channel_name)
            await self.accept()

        async def disconnect(self, code: int) -> None:
            await self.channel_layer.group_discard(self.room, self.channel_name)

        async def receive(self, text_data: str | None = None, bytes_data: Any = None) -> None:
            await self.channel_layer.group_send(
                self.room, {"type": "chat.message", "text": text_data}
            )

        async def chat_message(self, event: dict[str, Any]) -> None:
            await self.send(text_data=json.dumps({"said": event["text"]}))

    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers, ALLOWED_HOSTS=["*"]):
        application = ProtocolTypeRouter(
            {
                "http": get_asgi_application(),
                "websocket": URLRouter([path("ws/chat/<str:room>/", Chat.as_asgi())]),
            }
        )
        server = serve(application, lifespan="off")
        async with (
            dial(server.port, "/ws/chat/lobby/") as alice,
            dial(server.port, "/ws/chat/lobby/") as bob,
        ):
            await asyncio.sleep(0.1)  # both have joined the group
            await alice.send("hi bob")
            assert json.loads(await asyncio.wait_for(bob.recv(), 5)) == {"said": "hi bob"}
            assert json.loads(await asyncio.wait_for(alice.recv(), 5)) == {"said": "hi bob"}
