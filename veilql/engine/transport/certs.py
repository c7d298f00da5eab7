"""Federation certificates for the mutual-TLS transport.

A federation has one certificate authority (CA); every party node holds a certificate signed
by it whose subject CN and DNS/URI subject-alternative names carry the party's name. Both ends
of a connection present their certificate and check the other's against the CA *and* against
the party name they expect (``peer_party_names``), so a certificate of another federation, or
of another party of this one, is refused.

Keys are ECDSA P-256 (fast to generate, small handshakes); contexts allow TLS 1.3 only.
``make_ca``/``make_cert`` write throw-away PEM files for tests and for ``veil certs init``.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from veilql.errors import ConfigError

# URI SAN scheme naming a party: survives party names that are not valid host names.
PARTY_URI_PREFIX = "veilql:party:"


@dataclass(frozen=True)
class CertificateAuthority:
    """A federation CA: its PEM certificate and key on disk, plus the loaded objects."""

    cert_path: Path
    key_path: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class PartyCredentials:
    """What one party node needs for mutual TLS: the federation CA, its certificate and key."""

    ca_path: Path
    cert_path: Path
    key_path: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create with owner-only permissions from the start (no window where others can read).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    # Back-date a little so clocks that differ by minutes between hosts still agree.
    return now - dt.timedelta(hours=1), now + dt.timedelta(days=days)


def make_ca(
    directory: str | os.PathLike[str], name: str = "VeilQL federation CA", *, days: int = 365
) -> CertificateAuthority:
    """Create a self-signed CA as ``ca.pem``/``ca.key`` in ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "ca.pem", d / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return CertificateAuthority(cert_path, key_path, cert, key)


def load_ca(directory: str | os.PathLike[str]) -> CertificateAuthority:
    """Load a CA written by ``make_ca`` (``ca.pem``/``ca.key``) from ``directory``."""
    d = Path(directory)
    cert_path, key_path = d / "ca.pem", d / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the federation CA: {exc}", "run `veil certs init` to create one",
            file=str(d),
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an EC key", "recreate it with `veil certs init`",
                          file=str(key_path))
    return CertificateAuthority(cert_path, key_path, cert, key)


def make_cert(
    ca: CertificateAuthority, name: str, directory: str | os.PathLike[str], *, days: int = 365
) -> tuple[Path, Path]:
    """Issue a certificate for party ``name``; returns ``(cert_path, key_path)``.

    The party name is the subject CN, a DNS SAN (when it is a valid DNS label) and a URI SAN
    ``veilql:party:<name>``. The certificate is valid for both TLS server and client use,
    since a node both listens for and dials its peers.
    """
    if not name or any(c in name for c in "/\\\0") or name != name.strip():
        raise ConfigError(f"invalid party name {name!r} for a certificate",
                          "use a plain name such as 'bank'")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(PARTY_URI_PREFIX + name)]
    if name.isascii() and all(c.isalnum() or c == "-" for c in name):
        sans.insert(0, x509.DNSName(name))
    usages = [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    return issue_cert(ca, name, directory, sans, usages, days)


def issue_cert(
    ca: CertificateAuthority, name: str, directory: str | os.PathLike[str],
    sans: list[x509.GeneralName], usages: list[x509.ObjectIdentifier], days: int = 365,
) -> tuple[Path, Path]:
    """Sign a fresh P-256 key for CN ``name`` with these SANs and extended key usages;
    writes ``<name>.pem`` and ``<name>.key`` (0600) and returns their paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = d / f"{name}.pem", d / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


def make_federation_certs(
    directory: str | os.PathLike[str], parties: list[str] | tuple[str, ...]
) -> dict[str, PartyCredentials]:
    """A fresh CA plus one certificate per party, all in ``directory``."""
    ca = make_ca(directory)
    out: dict[str, PartyCredentials] = {}
    for p in parties:
        cert, key = make_cert(ca, p, directory)
        out[p] = PartyCredentials(ca.cert_path, cert, key)
    return out


def _context(purpose: ssl.Purpose, creds: PartyCredentials) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # Party names are checked by ``peer_party_names`` on both sides, not by host name: nodes
    # are addressed by IP or any host name, but authenticated by the party name they hold.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(creds.ca_path))
        ctx.load_cert_chain(certfile=str(creds.cert_path), keyfile=str(creds.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS credentials: {exc}",
            "check the CA, certificate and key paths (create them with `veil certs init`)",
            file=str(creds.cert_path),
        ) from exc
    return ctx


def server_context(creds: PartyCredentials) -> ssl.SSLContext:
    """A TLS 1.3 context for accepting peers; it requires a client certificate from the CA."""
    return _context(ssl.Purpose.CLIENT_AUTH, creds)


def client_context(creds: PartyCredentials) -> ssl.SSLContext:
    """A TLS 1.3 context for dialing peers; it presents our certificate, verifies theirs."""
    return _context(ssl.Purpose.SERVER_AUTH, creds)


def peer_party_names(peercert: dict | None) -> set[str]:
    """Every party name a verified peer certificate (``getpeercert()``) claims.

    >>> sorted(peer_party_names({"subject": ((("commonName", "bank"),),),
    ...                          "subjectAltName": (("URI", "veilql:party:bank"),)}))
    ['bank']
    >>> peer_party_names(None)
    set()
    """
    if not peercert:
        return set()
    names: set[str] = set()
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(value)
    sans: set[str] = set()
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            sans.add(value)
        elif kind == "URI" and value.startswith(PARTY_URI_PREFIX):
            sans.add(value[len(PARTY_URI_PREFIX):])
    # When SANs are present they must agree with the CN; a mismatch claims no name at all.
    if sans and not names <= sans:
        return set()
    return names or sans
