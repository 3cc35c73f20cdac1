"""What a TLS connection's session says of itself, read once when the handshake is done, for
the ASGI TLS extension (`exchange.TLSInfo`)."""

from __future__ import annotations

import ssl

from aserve.exchange import TLSInfo

# The ASGI TLS extension numbers versions as the protocol does (RFC 8446 §4.1.2, RFC 5246).
_VERSIONS = {"TLSv1.3": 0x0304, "TLSv1.2": 0x0303, "TLSv1.1": 0x0302, "TLSv1": 0x0301}

# RFC 4514 §2.3: the last relative distinguished name first, short names for the common
# attributes (what `getpeercert()` spells in full).
_SHORT = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


class TLSFacts:
    """The server's side of every TLS connection: the certificate it presents, and the IANA
    numbers of the cipher suites its context may agree on (OpenSSL names them only)."""

    __slots__ = ("certificate", "suites")

    def __init__(self, context: ssl.SSLContext, certificate: str) -> None:
        self.certificate = certificate
        # OpenSSL's cipher id carries the IANA number in its low 16 bits (0x0300C02F).
        self.suites = {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}

    def describe(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> TLSInfo:
        if ssl_object is None:
            return TLSInfo(self.certificate, (), None, None, None, None)
        cipher = ssl_object.cipher()
        version = ssl_object.version()
        chain: tuple[str, ...] = ()
        name = None
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            # Python before 3.13 gives the client's own certificate, not the chain above it.
            chain = (ssl.DER_cert_to_PEM_cert(der),)
            name = _rfc4514(ssl_object.getpeercert())
        return TLSInfo(
            server_cert=self.certificate,
            client_cert_chain=chain,
            client_cert_name=name,
            # A certificate that fails verification fails the handshake: none gets here.
            client_cert_error=None,
            tls_version=_VERSIONS.get(version) if version else None,
            cipher_suite=self.suites.get(cipher[0]) if cipher else None,
        )


def _rfc4514(cert: object) -> str | None:
    if not isinstance(cert, dict):
        return None
    subject = cert.get("subject") or ()
    parts = []
    for rdn in reversed(subject):
        parts.append("+".join(f"{_SHORT.get(key, key)}={_escape(value)}" for key, value in rdn))
    return ",".join(parts) or None


def _escape(value: str) -> str:
    """RFC 4514 §2.4: the characters that would end or bend an attribute value."""
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out
