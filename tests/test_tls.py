"""HTTPS over real sockets with a trustme CA: the scheme in the environ and the scope, the ASGI
TLS extension, wss, client certificates, and handshakes that fail or never finish."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import wsgiref.validate
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
import websockets

from aserve import Server
from aserve.config import Config
from aserve.errors import ConfigError
from aserve.types import Environ, Receive, Scope, Send, StartResponse
from tests.support.logs import LogRecords
from tests.support.polling import wait_until
from tests.support.procs import ServerProcess, assert_usage_error
from tests.support.servers import ServeFactory


@dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    cert_pem: str

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    here = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(here / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(here / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(here / "key.pem"))
    return Certs(
        ca,
        here / "ca.pem",
        here / "cert.pem",
        here / "key.pem",
        leaf.cert_chain_pems[0].bytes().decode("ascii"),
    )


def encrypt_key(key: Path, out: Path) -> None:
    """`key` encrypted with the password "right", as openssl writes one."""
    command = ["openssl", "pkey", "-in", str(key), "-out", str(out), "-aes256"]
    subprocess.run([*command, "-passout", "pass:right"], check=True)


def tls_settings(certs: Certs) -> dict[str, object]:
    return {"ssl_certfile": str(certs.cert_file), "ssl_keyfile": str(certs.key_file)}


async def scope_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(_described(scope))})
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    body = json.dumps(_described(scope)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _described(scope: Scope) -> dict[str, object]:
    return {
        "scheme": scope["scheme"],
        "client": scope["client"],
        "tls": scope["extensions"].get("tls"),
        "host": [v.decode() for k, v in scope["headers"] if k == b"host"],
    }


def _environ_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    keys = ("wsgi.url_scheme", "HTTPS", "REMOTE_ADDR", "HTTP_HOST", "SERVER_NAME")
    return [json.dumps({key: environ.get(key) for key in keys}).encode()]


environ_app = wsgiref.validate.validator(_environ_app)


@pytest.fixture
def client(certs: Certs) -> Iterator[httpx.Client]:
    with httpx.Client(verify=certs.client_context(), timeout=5) as http:
        yield http


def test_asgi_scope_is_https_with_the_tls_extension(
    serve: ServeFactory, certs: Certs, client: httpx.Client
) -> None:
    server = serve(scope_app, **tls_settings(certs))
    assert server.url.startswith("https://")
    answer = client.get(f"https://localhost:{server.port}/").json()
    assert answer["scheme"] == "https"
    tls = answer["tls"]
    assert tls["server_cert"].strip() == certs.cert_pem.strip()
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304  # both sides offer TLS 1.3
    # TLS 1.3's suites are 0x1301-0x1305 (RFC 8446 B.4).
    assert 0x1301 <= tls["cipher_suite"] <= 0x1305


def test_tls_12_reports_its_version_and_cipher_suite(serve: ServeFactory, certs: Certs) -> None:
    server = serve(scope_app, **tls_settings(certs), ssl_ciphers="ECDHE+AESGCM")
    context = certs.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    with httpx.Client(verify=context) as http:
        tls = http.get(f"https://localhost:{server.port}/").json()["tls"]
    assert tls["tls_version"] == 0x0303
    # TLS_ECDHE_{RSA,ECDSA}_WITH_AES_128_GCM_SHA256 (IANA TLS cipher suite registry).
    assert tls["cipher_suite"] in (0xC02F, 0xC02B)


def test_plain_http_server_lists_no_tls_extension(serve: ServeFactory) -> None:
    server = serve(scope_app)
    answer = httpx.get(f"{server.url}/").json()
    assert answer["scheme"] == "http"
    assert answer["tls"] is None


def test_wsgi_environ_is_https(serve: ServeFactory, certs: Certs, client: httpx.Client) -> None:
    server = serve(environ_app, **tls_settings(certs))
    answer = client.get(f"https://localhost:{server.port}/").json()
    assert answer["wsgi.url_scheme"] == "https"
    assert answer["HTTPS"] == "on"
    plain = serve(environ_app)
    assert httpx.get(plain.url).json()["wsgi.url_scheme"] == "http"


def test_certificate_and_key_in_one_file(
    serve: ServeFactory, certs: Certs, client: httpx.Client, tmp_path: Path
) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(certs.key_file.read_bytes() + certs.cert_file.read_bytes())
    server = serve(scope_app, ssl_certfile=str(both))
    assert client.get(f"https://localhost:{server.port}/").json()["scheme"] == "https"


async def test_websocket_over_tls_is_wss(serve: ServeFactory, certs: Certs) -> None:
    server = serve(scope_app, **tls_settings(certs))
    async with websockets.connect(
        f"wss://localhost:{server.port}/", ssl=certs.client_context(), open_timeout=5
    ) as ws:
        answer = json.loads(await ws.recv())
    assert answer["scheme"] == "wss"
    assert answer["tls"]["tls_version"] == 0x0304


def test_client_certificate_required_and_described(serve: ServeFactory, certs: Certs) -> None:
    server = serve(
        scope_app,
        **tls_settings(certs),
        ssl_ca_certs=str(certs.ca_file),
        ssl_cert_reqs="required",
    )
    url = f"https://localhost:{server.port}/"
    identity = certs.ca.issue_cert("alice@example.org", common_name="alice")
    context = certs.client_context()
    identity.configure_cert(context)
    with httpx.Client(verify=context) as http:
        tls = http.get(url).json()["tls"]
    assert tls["client_cert_name"].startswith("CN=alice")
    assert tls["client_cert_chain"] == [identity.cert_chain_pems[0].bytes().decode("ascii")]
    # Without a certificate, the handshake (TLS 1.3: the first read) fails.
    with httpx.Client(verify=certs.client_context()) as http, pytest.raises(httpx.HTTPError):
        http.get(url)


def test_failed_handshakes_are_one_debug_line_and_serving_goes_on(
    serve: ServeFactory, certs: Certs, client: httpx.Client, error_log: LogRecords
) -> None:
    server = serve(scope_app, **tls_settings(certs), log_level="debug")
    port = server.port
    # A client that does not trust the certificate gives up during the handshake.
    with pytest.raises(httpx.ConnectError), httpx.Client() as untrusting:
        untrusting.get(f"https://localhost:{port}/")
    # Plain HTTP on the TLS port: nothing comes back, the connection closes.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096) == b""
    # Bytes that are no TLS at all.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello" * 3)
        assert _closed(sock)
    assert client.get(f"https://localhost:{port}/").json()["scheme"] == "https"
    assert wait_until(lambda: len(_handshake_lines(error_log)) == 3)
    lines = _handshake_lines(error_log)
    assert any("plain HTTP sent to the HTTPS port" in line for line in lines)
    assert any("unknown ca" in line for line in lines)
    assert error_log.errors == []
    assert all(r.exc_info is None for r in error_log.records)


def _closed(sock: socket.socket) -> bool:
    """Read until the server closes (an alert may come first, or a reset)."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def _handshake_lines(log: LogRecords) -> list[str]:
    return [m for m in log.at(10) if m.startswith("TLS handshake with 127.0.0.1")]


def test_a_client_that_never_completes_the_handshake_is_dropped(
    serve: ServeFactory, certs: Certs, client: httpx.Client, error_log: LogRecords
) -> None:
    server = serve(scope_app, **tls_settings(certs), timeout_request_head=0.5, log_level="debug")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        began = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server, nothing sent
        waited = time.monotonic() - began
    assert 0.4 < waited < 3.0
    assert client.get(f"https://localhost:{server.port}/").json()["scheme"] == "https"
    assert wait_until(lambda: len(_handshake_lines(error_log)) == 1)


def test_the_head_timeout_counts_from_before_the_handshake(
    serve: ServeFactory, certs: Certs
) -> None:
    server = serve(scope_app, **tls_settings(certs), timeout_request_head=1.0)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    time.sleep(0.6)
    with certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        began = time.monotonic()
        assert sock.recv(4096) == b""  # the rest of the second, not a second more
        assert time.monotonic() - began < 0.8


def test_curl_verifies_the_certificate_and_plain_http_gets_nothing(
    serve: ServeFactory, certs: Certs
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    server = serve(scope_app, **tls_settings(certs))
    url = f"https://localhost:{server.port}/"
    done = subprocess.run(
        [curl, "-sS", "--cacert", str(certs.ca_file), url], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["scheme"] == "https"
    plain = subprocess.run(
        [curl, "-sS", f"http://127.0.0.1:{server.port}/"], capture_output=True, check=False
    )
    assert plain.returncode == 52  # CURLE_GOT_NOTHING: "Empty reply from server"


@pytest.mark.parametrize(
    ("which", "needle"),
    [
        ("certfile", "no such file"),
        ("keyfile", "no such file"),
        ("password", "password"),
        ("no certfile", "--ssl-keyfile needs --ssl-certfile"),
    ],
)
def test_bad_certificate_settings_are_one_line_exit_2(
    certs: Certs, tmp_path: Path, which: str, needle: str
) -> None:
    args = ["tests.support.apps.asgi_apps:app", "--port", "0"]
    if which == "certfile":
        args += ["--ssl-certfile", str(tmp_path / "missing.pem")]
    elif which == "no certfile":
        args += ["--ssl-keyfile", str(certs.key_file)]
    elif which == "keyfile":
        args += ["--ssl-certfile", str(certs.cert_file), "--ssl-keyfile", str(tmp_path / "k")]
    else:
        encrypted = tmp_path / "encrypted.pem"
        encrypt_key(certs.key_file, encrypted)
        args += ["--ssl-certfile", str(certs.cert_file), "--ssl-keyfile", str(encrypted)]
        args += ["--ssl-keyfile-password", "wrong"]
    assert_usage_error(args, needle)


def test_encrypted_key_with_its_password(
    serve: ServeFactory, certs: Certs, client: httpx.Client, tmp_path: Path
) -> None:
    encrypted = tmp_path / "encrypted.pem"
    encrypt_key(certs.key_file, encrypted)
    server = serve(
        scope_app,
        ssl_certfile=str(certs.cert_file),
        ssl_keyfile=str(encrypted),
        ssl_keyfile_password="right",
    )
    assert client.get(f"https://localhost:{server.port}/").json()["scheme"] == "https"


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"ssl_certfile": "c.pem", "reload_browser": True}, "--reload-browser"),
        ({"ssl_certfile": "c.pem", "server": "wsgiref"}, "wsgiref"),
        ({"https": True, "ssl_certfile": "c.pem"}, "--https"),
    ],
)
def test_settings_that_do_not_go_together(settings: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Config(**settings)  # type: ignore[arg-type]


def test_bad_cipher_string_is_a_usage_error(certs: Certs) -> None:
    assert_usage_error(
        [
            "tests.support.apps.asgi_apps:app",
            "--port",
            "0",
            "--ssl-certfile",
            str(certs.cert_file),
            "--ssl-keyfile",
            str(certs.key_file),
            "--ssl-ciphers",
            "NOPE",
        ],
        "--ssl-ciphers",
    )


def test_reload_serves_the_error_page_and_the_app_over_tls(
    certs: Certs, client: httpx.Client, tmp_path: Path
) -> None:
    app = tmp_path / "tlsapp.py"
    app.write_text("raise RuntimeError('broken on purpose')\n")
    args = ["tlsapp:app", "--reload", "--port", "0", *_cli_tls(certs)]
    with ServerProcess(*args, cwd=tmp_path) as server:
        port = int(server.wait_for(r"aserve supervisor on https://127\.0\.0\.1:(\d+)").group(1))
        # The supervisor serves the error page itself, over TLS too.
        assert wait_until(lambda: _status(client, port) == 500, 15)
        page = client.get(f"https://localhost:{port}/", headers={"accept": "text/plain"})
        assert "broken on purpose" in page.text
        app.write_text(
            "async def app(scope, receive, send):\n"
            "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
            "    await send({'type': 'http.response.body', 'body': scope['scheme'].encode()})\n"
        )
        assert wait_until(lambda: _status(client, port) == 200, 15)
        assert client.get(f"https://localhost:{port}/").text == "https"
        # The supervisor stops its template and worker in order (a kill would leave them
        # holding the output pipe).
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0


def _cli_tls(certs: Certs) -> list[str]:
    return ["--ssl-certfile", str(certs.cert_file), "--ssl-keyfile", str(certs.key_file)]


def _status(client: httpx.Client, port: int) -> int:
    try:
        return client.get(f"https://localhost:{port}/").status_code
    except httpx.HTTPError:
        return 0


def test_shutdown_does_not_wait_for_a_handshake_left_hanging(
    certs: Certs, error_log: LogRecords
) -> None:
    config = Config(port=0, access_log=False, **tls_settings(certs))  # type: ignore[arg-type]
    server = Server(scope_app, config).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        began = time.monotonic()
        server.stop(timeout=10)
        stopped = time.monotonic() - began
    assert server.exit_code == 0
    assert stopped < 3.0  # not the 10 s head timeout
    assert error_log.errors == []
