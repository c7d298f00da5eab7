"""Who is on the other end of a connection: a party node or an analyst.

Party certificates (``certs.make_cert``) carry the URI SAN ``veilql:party:<name>``; analyst
certificates (``make_analyst_cert``) carry ``veilql:analyst:<name>`` and are valid for TLS
client use only. A node takes the analyst whose budget pays for a query from this name, never
from what the client writes in its request, and a party connection must hold a *party*
certificate, so an analyst's certificate can never pose as a node (even when an analyst and a
party share a name).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veilql.engine.transport.certs import (
    PARTY_URI_PREFIX,
    CertificateAuthority,
    issue_cert,
)
from veilql.errors import ConfigError

ANALYST_URI_PREFIX = "veilql:analyst:"
PARTY, ANALYST_KIND = "party", "analyst"


def make_analyst_cert(
    ca: CertificateAuthority, name: str, directory: str | os.PathLike[str], *, days: int = 365
) -> tuple[Path, Path]:
    """Issue a client certificate for analyst ``name``; returns ``(cert_path, key_path)``."""
    if not name or any(c in name for c in "/\\\0") or name != name.strip():
        raise ConfigError(f"invalid analyst name {name!r} for a certificate",
                          "use a plain name such as 'alice'")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ANALYST_URI_PREFIX + name)]
    return issue_cert(ca, name, directory, sans, [ExtendedKeyUsageOID.CLIENT_AUTH], days)


def peer_identity(peercert: dict | None) -> tuple[str, str] | None:
    """``("party", name)`` or ``("analyst", name)`` of a verified peer certificate, or None.

    The CN must agree with exactly one VeilQL URI SAN; anything else identifies no one.

    >>> peer_identity({"subject": ((("commonName", "alice"),),),
    ...                "subjectAltName": (("URI", "veilql:analyst:alice"),)})
    ('analyst', 'alice')
    >>> peer_identity({"subject": ((("commonName", "bank"),),),
    ...                "subjectAltName": (("DNS", "bank"), ("URI", "veilql:party:bank"))})
    ('party', 'bank')
    >>> peer_identity({"subject": ((("commonName", "bank"),),),
    ...                "subjectAltName": (("URI", "veilql:analyst:alice"),)}) is None
    True
    """
    if not peercert:
        return None
    cns = [v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"]
    found: list[tuple[str, str]] = []
    for kind, value in peercert.get("subjectAltName", ()):
        if kind != "URI":
            continue
        if value.startswith(PARTY_URI_PREFIX):
            found.append((PARTY, value[len(PARTY_URI_PREFIX):]))
        elif value.startswith(ANALYST_URI_PREFIX):
            found.append((ANALYST_KIND, value[len(ANALYST_URI_PREFIX):]))
    if len(found) != 1 or cns != [found[0][1]]:
        return None
    return found[0]


def certificate_name(cert_path: str | os.PathLike[str]) -> str:
    """The analyst (or party) name a PEM certificate file carries in its CN."""
    return certificate_identity(cert_path)[1]


def certificate_identity(cert_path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(kind, name)`` of a PEM certificate file: kind is "party", "analyst" or ""."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate: {exc}",
                          "point $VEIL_CERT at a PEM file made by `veil certs init`",
                          file=str(cert_path)) from exc
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise ConfigError("certificate has no common name", "recreate it with `veil certs init`",
                          file=str(cert_path))
    name = str(attrs[0].value)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    kind = ("analyst" if ANALYST_URI_PREFIX + name in uris
            else "party" if PARTY_URI_PREFIX + name in uris else "")
    return kind, name
