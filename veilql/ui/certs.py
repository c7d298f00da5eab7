"""``veil certs init``: a federation CA plus a certificate for every party and analyst.

Run it once, by whoever operates the federation; then give each party its own ``<party>.key``
(and everyone ``ca.pem`` and the certificates), and each analyst their ``<analyst>.key``.
Keys are written owner-readable only. See docs/deploy.md.
"""

from __future__ import annotations

from pathlib import Path

import click

from veilql.engine.server import certs_dir
from veilql.engine.transport.certs import make_ca, make_cert
from veilql.engine.transport.identity import make_analyst_cert
from veilql.errors import ConfigError, UsageError
from veilql.policies.model import Federation
from veilql.ui.clicommon import emit, federation_option, load


def init_certs(federation: Federation, out: Path | None = None, *, force: bool = False,
               days: int = 365) -> list[Path]:
    """Create the CA and every party's and analyst's certificate; the files written."""
    clash = sorted(set(federation.party_names) & set(federation.analysts))
    if clash:
        raise ConfigError(f"{', '.join(clash)} is both a party and an analyst",
                          "give analysts names that no party uses", file=str(federation.path))
    d = Path(out) if out is not None else certs_dir(federation)
    if (d / "ca.pem").exists() and not force:
        raise UsageError(f"{d / 'ca.pem'} already exists",
                         "pass --force to replace the CA and every certificate (all nodes "
                         "and analysts then need the new files)")
    ca = make_ca(d, f"VeilQL CA of {federation.name}", days=days)
    written = [ca.cert_path, ca.key_path]
    for party in federation.party_names:
        written.extend(make_cert(ca, party, d, days=days))
    for analyst in sorted(federation.analysts):
        written.extend(make_analyst_cert(ca, analyst, d, days=days))
    return written


@click.group("certs")
def certs() -> None:
    """Certificates for party nodes and analysts (mutual TLS)."""


@certs.command("init")
@federation_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the files (default: the federation's certs folder).")
@click.option("--force", is_flag=True, help="Replace an existing CA and certificates.")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True,
              help="Validity of every certificate.")
def init(federation: str | None, out: Path | None, force: bool, days: int) -> None:
    """Create a federation CA and a certificate for every party and analyst."""
    fed = load(federation)
    written = init_certs(fed, out, force=force, days=days)
    emit("\n".join(str(p) for p in written))
    click.echo(f"wrote a CA and {len(written) // 2 - 1} certificates to {written[0].parent}; "
               "keep ca.key offline and give each party and analyst only its own .key", err=True)
