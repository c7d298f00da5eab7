"""What a party receives during a cross-party query never shows another party's data.

With ``VEIL_TRANSCRIPT_DIR`` set, every party writes each message it receives. We scan
every payload, at every byte offset, for the 64-bit encodings of the other parties' unit
keys and of their (fixed-point) values. Shares are uniformly random words, so a hit
would mean plaintext travelled. Numbers whose eight bytes are all 0 or 1 are skipped:
bit-share messages are made of such bytes and match them by chance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from oracle import union_connection

import veilql
from veilql.engine.transport.base import read_transcript

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
SQL = ("SELECT c.region, COUNT(*) AS n, SUM(l.amount) AS total FROM bank.customers c "
       "JOIN bank.loans l ON c.customer_id = l.customer_id "
       "JOIN payments.accounts a ON a.customer_id = c.customer_id "
       "JOIN insurer.policies p ON p.customer_id = c.customer_id "
       "WHERE a.monthly_txn_amount > p.premium AND p.open_claim = 0 GROUP BY c.region")

SECRETS = {  # per party: columns whose values must not reach the others
    "bank": ["SELECT customer_id FROM bank.customers", "SELECT CAST(amount * 100 AS BIGINT) "
             "FROM bank.loans", "SELECT CAST(income * 100 AS BIGINT) FROM bank.customers"],
    "payments": ["SELECT customer_id FROM payments.accounts",
                 "SELECT CAST(monthly_txn_amount * 100 AS BIGINT) FROM payments.accounts"],
    "insurer": ["SELECT customer_id FROM insurer.policies",
                "SELECT CAST(premium * 100 AS BIGINT) FROM insurer.policies"],
}


def _small_words(payload: bytes) -> np.ndarray:
    """Every 8-byte little-endian word of ``payload`` below 2^40, at every byte offset.

    Keys and fixed-point values of the sample are far below 2^40; random share words are
    below it with probability 2^-24, so this keeps the scan fast without missing a hit.
    """
    buf = np.frombuffer(payload, dtype=np.uint8)
    out = []
    for o in range(min(8, max(len(buf) - 7, 0))):
        w = buf[o: o + (len(buf) - o) // 8 * 8].view("<u8")
        out.append(w[(w >> np.uint64(40)) == 0])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def _bitlike(values: np.ndarray) -> np.ndarray:
    b = values.astype("<u8").view(np.uint8).reshape(-1, 8)
    return (b <= 1).all(axis=1)


@pytest.mark.parametrize("party", sorted(SECRETS))
def test_no_party_receives_another_partys_keys_or_values(
    party: str, transcripts: Path, secrets: dict[str, np.ndarray]
) -> None:
    records = read_transcript(transcripts / f"{party}.bin")
    assert records, "the party received nothing: the query did not run securely"
    others = np.unique(np.concatenate([v for p, v in secrets.items() if p != party]))
    others = others[~_bitlike(others)]
    for sender, tag, payload in records:
        hits = np.intersect1d(_small_words(payload), others)
        assert len(hits) == 0, f"{party} got {hits[:5]} from {sender} in {tag}"


@pytest.fixture(scope="module")
def secrets(transcripts: Path) -> dict[str, np.ndarray]:
    """Per party, the 64-bit encodings of its keys and values."""
    fed = veilql.connect(transcripts.parent / "fed" / "federation.toml", "alice").federation
    con = union_connection(fed)
    return {
        party: np.concatenate([
            np.asarray([r[0] for r in con.execute(q).fetchall() if r[0] is not None],
                       dtype=np.int64) for q in queries]).view(np.uint64)
        for party, queries in SECRETS.items()
    }


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
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
