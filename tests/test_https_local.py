"""`--https`: the local CA and localhost certificate made once in a temporary cache directory,
reused, renewed, kept private; a client trusting the CA verifies the server; `manage.py
runserver --https` and runserver_plus's `--cert-file`/`--key-file`."""

from __future__ import annotations

import datetime
import os
import re
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trustme

from aserve import localca
from tests.support.djangoproject import ASGI_ENV, Runserver, environment
from tests.support.procs import ROOT, ServerProcess

LISTENING = r"on https://127\.0\.0\.1:(\d+); quit"
APP = "tests.support.apps.asgi_apps:app"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "aserve"


def env_with_cache(cache: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(cache.parent)}


def verified_get(ca: Path, url: str) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=5) as http:
        return http.get(url)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def serve_https(cache: Path) -> Iterator[tuple[ServerProcess, int]]:
    with ServerProcess(APP, "--https", "--port", "0", env=env_with_cache(cache)) as server:
        port = int(server.wait_for(LISTENING).group(1))
        yield server, port


def test_https_creates_reuses_and_protects_its_ca(cache: Path) -> None:
    ca_file = cache / "rootCA.pem"
    with serve_https(cache) as (server, port):
        assert server.matches(f"Created a local CA for --https: {re.escape(str(ca_file))}")
        # The command that makes the system trust it, with the CA's path in it.
        assert server.matches(r"^\s+sudo .*" + re.escape(str(ca_file)))
        response = verified_get(ca_file, f"https://localhost:{port}/")
        assert response.status_code == 200
        # An address the certificate names too.
        assert verified_get(ca_file, f"https://127.0.0.1:{port}/").status_code == 200
    first_ca = ca_file.read_bytes()
    first_leaf = (cache / "localhost.pem").read_bytes()
    assert mode(cache) == 0o700
    assert mode(cache / "rootCA-key.pem") == 0o600
    assert mode(cache / "localhost-key.pem") == 0o600
    with serve_https(cache) as (server, port):
        assert not server.matches("Created a local CA")
        assert server.matches(f"local CA {re.escape(str(ca_file))}")
        assert verified_get(ca_file, f"https://localhost:{port}/").status_code == 200
    assert ca_file.read_bytes() == first_ca
    assert (cache / "localhost.pem").read_bytes() == first_leaf


def test_a_leaf_near_its_end_or_from_another_ca_is_made_again(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = localca.local_certificate()
    assert first.created_ca and first.created_cert
    ca, leaf = first.ca.read_bytes(), first.cert.read_bytes()
    # Every certificate now counts as expiring within the renewal margin, but the CA.
    monkeypatch.setattr(localca, "RENEW_BEFORE", datetime.timedelta(days=900))
    renewed = localca.local_certificate()
    assert not renewed.created_ca and renewed.created_cert
    assert renewed.ca.read_bytes() == ca
    assert renewed.cert.read_bytes() != leaf
    assert mode(renewed.key) == 0o600
    monkeypatch.setattr(localca, "RENEW_BEFORE", datetime.timedelta(days=7))
    assert not localca.local_certificate().created_cert
    # A leaf some other CA signed (a copied cache, a CA made anew) is replaced too.
    stranger = trustme.CA(key_type=trustme.KeyType.ECDSA).issue_cert("localhost")
    stranger.cert_chain_pems[0].write_to_path(str(renewed.cert))
    stranger.private_key_pem.write_to_path(str(renewed.key))
    again = localca.local_certificate()
    assert again.created_cert and not again.created_ca
    assert again.cert == cache / "localhost.pem"


def test_missing_cryptography_is_one_line_naming_the_extra(cache: Path) -> None:
    script = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from aserve.cli import main\n"
        f"sys.exit(main([{APP!r}, '--https', '--port', '0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env_with_cache(cache),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "aserve: error: --https needs the cryptography package: pip install 'aserve[https]'"
    ]
    assert not cache.exists()


@pytest.mark.parametrize("interface", ["WSGI", "ASGI"])
def test_runserver_https(django_project: Path, cache: Path, interface: str) -> None:
    extra = ASGI_ENV if interface == "ASGI" else {}
    env = environment(XDG_CACHE_HOME=str(cache.parent), **extra)
    # The reloader on: the supervisor and its workers each build the TLS context.
    with Runserver(django_project, "127.0.0.1:0", "--https", env=env) as server:
        port = server.wait_started()
        assert f"development server at https://127.0.0.1:{port}/" in "\n".join(server.output)
        assert server.matches("Created a local CA for --https")
        response = verified_get(cache / "rootCA.pem", f"https://localhost:{port}/pid/")
        assert response.status_code == 200


def test_runserver_plus_spellings(django_project: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    args = ["--cert-file", str(tmp_path / "cert.pem"), "--key-file", str(tmp_path / "key.pem")]
    with Runserver(django_project, "127.0.0.1:0", "--noreload", *args) as server:
        port = server.wait_started()
        response = verified_get(tmp_path / "ca.pem", f"https://localhost:{port}/pid/")
        assert response.status_code == 200
