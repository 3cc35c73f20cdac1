"""`--https`: a local certificate authority made once per user, and a certificate it signs for
localhost, 127.0.0.1 and ::1, cached under the user's cache directory (as mkcert does)."""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import platform
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aserve.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_NAME = "aserve development CA"
# macOS and iOS refuse a server certificate valid for more than 825 days even from a root the
# user trusts (Apple's requirements for TLS server certificates, 2019); mkcert's is the same.
LEAF_DAYS = 825
CA_DAYS = 10 * 365
# A certificate this close to its end is made anew, so a long-running server does not see it
# expire under it.
RENEW_BEFORE = datetime.timedelta(days=7)
HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class LocalCertificate:
    """The files `--https` serves with, and whether this call made the CA."""

    ca: Path
    cert: Path
    key: Path
    created_ca: bool
    created_cert: bool


def cache_dir() -> Path:
    """Where the CA lives: $XDG_CACHE_HOME/aserve, else ~/.cache/aserve (the XDG default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aserve"


def local_certificate() -> LocalCertificate:
    """The CA and the localhost certificate, made when missing, the latter again when it
    nears its end or another CA signed it."""
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise ConfigError(
            "--https needs the cryptography package: pip install 'aserve[https]'"
        ) from None
    folder = cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca_file, ca_key_file = folder / "rootCA.pem", folder / "rootCA-key.pem"
        cert_file, key_file = folder / "localhost.pem", folder / "localhost-key.pem"
        now = datetime.datetime.now(datetime.UTC)
        created_ca = created_cert = False
        ca = _load(ca_file, ca_key_file, now)
        if ca is None:
            ca = _make_ca(now)
            _write(ca_key_file, _key_pem(ca[1]), private=True)
            _write(ca_file, ca[0].public_bytes(serialization.Encoding.PEM), private=False)
            created_ca = True
        leaf = None if created_ca else _load(cert_file, key_file, now)
        if leaf is None or not _signed_by(leaf[0], ca[0]):
            cert, key = _make_leaf(ca, now)
            _write(key_file, _key_pem(key), private=True)
            _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), private=False)
            created_cert = True
    except OSError as exc:
        raise ConfigError(
            f"--https: cannot write {exc.filename or folder}: {exc.strerror}"
        ) from exc
    return LocalCertificate(ca_file, cert_file, key_file, created_ca, created_cert)


def trust_commands(ca: Path) -> list[str]:
    """The commands that make this system, then the browsers with their own store, trust the
    CA (mkcert's -install does the same steps)."""
    if sys.platform == "darwin":
        return [
            "sudo security add-trusted-cert -d -r trustRoot "
            f"-k /Library/Keychains/System.keychain {ca}"
        ]
    if sys.platform == "win32":
        return [f"certutil -addstore -f ROOT {ca}"]
    if Path("/etc/pki/ca-trust/source/anchors").is_dir():  # Fedora, RHEL
        system = (
            f"sudo cp {ca} /etc/pki/ca-trust/source/anchors/aserve-development-ca.pem "
            "&& sudo update-ca-trust"
        )
    else:  # Debian, Ubuntu, Alpine
        system = (
            f"sudo cp {ca} /usr/local/share/ca-certificates/aserve-development-ca.crt "
            "&& sudo update-ca-certificates"
        )
    # Chrome and Firefox on Linux read NSS's database, not the system's store.
    nss = f'certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n "{CA_NAME}" -i {ca}'
    return [system, nss]


def _load(
    cert_file: Path, key_file: Path, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """A certificate and its key from the cache, None when absent, unreadable or expiring."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key() != key.public_key():
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return None
    return cert, key


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _make_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    # The user and machine in the name, as mkcert's: a CA seen in a trust store says whose.
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_NAME),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, who),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{CA_NAME} {who}"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        # pathlen 0: the CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(host)) for host in HOSTS[1:]]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_NAME),
                    x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        # Browsers read the names from subjectAltName only (RFC 2818 §3.1; Chrome since 58).
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write through a new file renamed into place: a server starting at the same moment reads
    the old file or the new one, never half of one; a key is never readable by others."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)  # whatever the umask or an older file
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def describe(files: LocalCertificate) -> list[str]:
    """What the command prints: the CA's path, and when it is new, how to trust it."""
    if not files.created_ca:
        return [f"HTTPS with the certificate of the local CA {files.ca}"]
    system = platform.system() or sys.platform
    return [
        f"Created a local CA for --https: {files.ca}",
        f"Browsers warn until they trust it; on {system}, run:",
        *(f"    {command}" for command in trust_commands(files.ca)),
    ]
