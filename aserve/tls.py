"""The TLS server context built from the `--ssl-*` settings (or `--https`'s local certificate),
in each process that serves; a file or password it cannot use is a ConfigError naming it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from aserve.config import Config
from aserve.errors import ConfigError

_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "0": ssl.CERT_NONE,
    "1": ssl.CERT_OPTIONAL,
    "2": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server's TLS context and the certificate it presents (PEM, for the ASGI `tls`
    extension's `server_cert`)."""

    context: ssl.SSLContext
    certificate: str


def certificate_files(config: Config) -> tuple[str, str | None]:
    """The certificate and key files the settings name, `--https`'s made if needed."""
    if config.https:
        from aserve.localca import local_certificate

        files = local_certificate()
        return str(files.cert), str(files.key)
    if config.ssl_certfile is None:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile")
    return config.ssl_certfile, config.ssl_keyfile


def server_tls(config: Config) -> ServerTLS | None:
    """The TLS side of a server serving `config`; None for plain HTTP."""
    if not config.tls:
        return None
    certfile, keyfile = certificate_files(config)
    # PROTOCOL_TLS_SERVER with Python's defaults: no SSLv3, no compression, no renegotiation,
    # forward-secret AEAD suites first; TLS 1.0 and 1.1 are refused (RFC 8996).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A browser offers h2 first; only http/1.1 is served, and saying so spares it a guess.
    context.set_alpn_protocols(["http/1.1"])
    password = config.ssl_keyfile_password
    try:
        # Without a password OpenSSL would prompt on the terminal for an encrypted key; an
        # empty one fails at once instead.
        context.load_cert_chain(certfile, keyfile, password or (lambda: b""))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"TLS certificate or key: no such file {exc.filename or certfile}"
        ) from exc
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot use the certificate {certfile} with the key {keyfile or 'in it'}: "
            f"{exc.reason or exc} (an encrypted key needs --ssl-keyfile-password)"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {certfile}: {exc.strerror or exc}") from exc
    if config.ssl_ca_certs is not None:
        try:
            context.load_verify_locations(config.ssl_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ssl-ca-certs {config.ssl_ca_certs}: {exc}") from exc
    context.verify_mode = _CERT_REQS[config.ssl_cert_reqs]
    if config.ssl_ciphers is not None:
        try:
            context.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(f"--ssl-ciphers {config.ssl_ciphers!r}: no cipher matches") from exc
    try:
        with open(certfile, encoding="ascii", errors="replace") as file:
            pem = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {certfile}: {exc.strerror}") from exc
    end = pem.find("-----END CERTIFICATE-----")
    start = pem.find("-----BEGIN CERTIFICATE-----")
    certificate = pem[start : end + len("-----END CERTIFICATE-----")] + "\n"
    return ServerTLS(context, certificate)
