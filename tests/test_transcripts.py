"""What a party receives during a cross-party query never shows another party's data.

With ``VEIL_TRANSCRIPT_DIR`` set, every endpoint records each frame delivered to it, the
analyst's included. We run a three-party query with a cross-party predicate and scan every
record of every transcript with the adversarial scanner of
``tests/adversarial/test_transcript_scan.py``: the other parties' unit keys, row values
(raw, in fixed point, per-person sums) and private labels, as 64-bit integers and float64
at every byte offset in both byte orders and signs (zero hits; ~1e-6 expected by chance),
as 32-bit integers against decoys of the same magnitudes, as decimal text, and inside JSON.
The exclusion rule and the chance baseline are explained there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from adversarial.test_transcript_scan import (
    ANALYST,
    FederationSecrets,
    assert_clean,
    collect_secrets,
    records_of,
    scan_directory,
)

import veilql

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
SQL = ("SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS total FROM bank.customers c "
       "JOIN bank.loans l ON c.customer_id = l.customer_id "
       "JOIN payments.accounts a ON a.customer_id = c.customer_id "
       "JOIN insurer.policies p ON p.customer_id = c.customer_id "
       "WHERE a.monthly_txn_amount > p.premium AND p.open_claim = 0 GROUP BY c.region")
PARTIES = ("bank", "payments", "insurer")


@pytest.mark.parametrize("receiver", [*PARTIES, ANALYST])
def test_no_receiver_gets_what_it_must_not_see(
    receiver: str, transcripts: Path, secrets: FederationSecrets
) -> None:
    """Each party's and the analyst's transcript holds none of the values it must not see."""
    assert_clean(scan_directory(transcripts, secrets, [receiver]))


def test_every_endpoint_recorded_what_was_delivered(transcripts: Path) -> None:
    """Every party heard from every other; the analyst has every status and output share."""
    for party in PARTIES:
        senders = {f for f, *_ in records_of(transcripts / f"{party}.bin")}
        assert senders == set(PARTIES) - {party}, (party, senders)
    analyst = [(f, t) for f, k, t, _ in records_of(transcripts / "analyst.bin")]
    assert sorted(f for f, t in analyst if t == "release") == sorted(PARTIES)
    assert {f for f, t in analyst if "/budget/" in t} == set(PARTIES)


@pytest.fixture(scope="module")
def secrets(transcripts: Path) -> FederationSecrets:
    """Every party's values, read through each party's own connector."""
    return collect_secrets(veilql.connect(transcripts.parent / "fed" / "federation.toml",
                                          "alice").federation)


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The transcript folder of one embedded run of ``SQL``."""
    root = tmp_path_factory.mktemp("transcripts")
    shutil.copytree(DEMO, root / "fed", ignore=shutil.ignore_patterns("ledgers"))
    out = root / "t"
    mp = pytest.MonkeyPatch()
    mp.setenv("VEIL_TRANSCRIPT_DIR", str(out))
    try:
        with veilql.connect(root / "fed" / "federation.toml", "alice") as session:
            result = session.sql(SQL, epsilon=1.0)
        assert len(result.rows) == 5
    finally:
        mp.undo()
    return out
