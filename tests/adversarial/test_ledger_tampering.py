"""Attack: change what a party's privacy-budget ledger says, and have nobody notice.

The attacker is a hostile party, or an insider with write access to that party's state folder,
who wants to hide spending (so an analyst gets more budget than the federation allows) or to
hide that a query ran. The ledgers come from real queries over a tmp copy of the demo
federation (``veilql.connect`` with ``VEIL_LEDGER_DIR``), in which the nodes keep the heads of
each other's ledgers as anchors. Routes:

- edit a charge and recompute the hash chain (plain SHA-256, or HMAC under a key the attacker
  made up, or after replacing the party's key file with its own);
- downgrade the chain to plain SHA-256, with or without deleting the key file;
- cut entries off the end of the ledger (leaving a valid prefix), also after editing one
  peer's anchor file to match;
- delete the ledger file (with or without its key) to reset the budget or hide a query;
- keep two chains and show different ones to the peers (a fork);
- garble a peer's anchor file to destroy the evidence;
- leave a reservation open forever (a node that lost track of a query);
- and, each time, see whether ``veil ledger verify`` and ``veil report`` stay green.

Not covered because not detectable (docs/ledger.md): the attacker rewrites its ledger *and*
every other party's anchor file consistently (all parties' state in hand, i.e. collusion), or
deletes every ledger and every anchor file at once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import veilql
from veilql.cli import main
from veilql.engine.ledger import Ledger, verify_all
from veilql.engine.ledger.entries import digest
from veilql.errors import VeilError
from veilql.policies.loader import load_federation
from veilql.policies.model import Analyst
from veilql.ui.report.collect import collect
from veilql.ui.report.command import render

DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "demo"
PARTIES = ("bank", "payments", "insurer")
JOIN = ("SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
        "ON l.customer_id = p.customer_id")
BANK_ONLY = "SELECT COUNT(*) AS n FROM bank.loans"

pytestmark = pytest.mark.filterwarnings("ignore:running embedded")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(federation.toml, ledger folder) after real queries: bank and insurer charged for two
    joins, bank for one query of its own; every node anchored the others' heads."""
    root = tmp_path_factory.mktemp("tamper")
    fed = root / "fed"
    shutil.copytree(DEMO, fed, ignore=shutil.ignore_patterns("ledgers"))
    ledgers = root / "ledgers"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VEIL_LEDGER_DIR", str(ledgers))
        with veilql.connect(fed / "federation.toml", analyst="bob") as s:
            s.sql(JOIN, epsilon=0.5)
            s.sql(BANK_ONLY, epsilon=1.0)
            s.sql(JOIN, epsilon=0.25)
    return fed / "federation.toml", ledgers


@pytest.fixture
def state(pristine: tuple[Path, Path], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """A copy of the pristine state folder for one attack; ``VEIL_LEDGER_DIR`` points at it."""
    fed, ledgers = pristine
    copy = tmp_path / "ledgers"
    shutil.copytree(ledgers, copy)
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(copy))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1893456000")
    yield fed, copy


def open_all(folder: Path) -> dict[str, Ledger]:
    """Every party's ledger in ``folder``, opened the way the nodes open them."""
    return {p: Ledger(folder / f"{p}.jsonl", p) for p in PARTIES}


def rows(path: Path) -> list[dict]:
    """The entries of a ledger file as JSON objects."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path: Path, objs: list[dict]) -> None:
    """Write entries back in canonical form."""
    path.write_text("".join(json.dumps(o, sort_keys=True, separators=(",", ":")) + "\n"
                            for o in objs))


def rechain(objs: list[dict], key: bytes | None) -> list[dict]:
    """Recompute ``prev`` and ``hash`` of every entry, as a forger with ``key`` would."""
    prev = "0" * 64
    out = []
    for o in objs:
        o = {k: v for k, v in o.items() if k != "hash"}
        o["prev"] = prev
        o["hash"] = prev = digest(o, key)
        out.append(o)
    return out


def hide_bobs_spending(objs: list[dict]) -> list[dict]:
    """Every charge of the bank's own query (epsilon 1) rewritten to cost 0.01."""
    for o in objs:
        if o.get("sql") == BANK_ONLY:
            o["epsilon"] = "0.01"
    return objs


def cli(*args: str):
    """Run ``veil`` in-process."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def failures(results: dict, party: str) -> str:
    """The problems of ``party`` in ``verify_all`` results, as one text."""
    return "; ".join(str(p) for p in results[party].problems)


# ------------------------------------------------------------------ edit and recompute


def test_rewritten_chain_with_recomputed_sha256_fails_verify(state) -> None:
    # Route: edit bob's charge at the bank and recompute every hash with plain SHA-256, the
    # public algorithm; before ledger keys this verified.
    fed, folder = state
    path = folder / "bank.jsonl"
    write(path, rechain(hide_bobs_spending(rows(path)), None))
    result = Ledger(path, "bank").verify()
    assert not result.ok and result.bad_index == 0
    res = cli("ledger", "verify", "-f", str(fed))
    assert res.exit_code == 3 and "FAILED" in res.stdout


def test_downgraded_chain_claiming_plain_sha256_fails_while_the_key_exists(state) -> None:
    # Route: as above, and also change the genesis entry to say the chain is plain SHA-256,
    # so that a verifier without the key would accept it.
    fed, folder = state
    path = folder / "bank.jsonl"
    objs = hide_bobs_spending(rows(path))
    objs[0]["mac"] = "sha256"
    write(path, rechain(objs, None))
    result = Ledger(path, "bank").verify()
    assert not result.ok and result.bad_index == 0
    assert "bank.ledger-key" in (result.problem or "")
    assert cli("ledger", "verify", "-f", str(fed)).exit_code == 3


def test_edited_charge_with_recomputed_hmac_without_key_fails(state) -> None:
    # Route: the forger recomputes the chain exactly as the genesis entry says (plain SHA-256,
    # or HMAC-SHA256), but it does not hold the party's key, so it uses a key of its own.
    fed, folder = state
    path = folder / "bank.jsonl"
    objs = hide_bobs_spending(rows(path))
    key = None if objs[0]["mac"] == "sha256" else b"guessed by the forger"
    write(path, rechain(objs, key))
    assert not Ledger(path, "bank").verify().ok
    assert not verify_all(open_all(folder))["bank"].ok
    assert cli("ledger", "verify", "-f", str(fed)).exit_code == 3


def test_edited_charge_with_hmac_under_a_replaced_key_fails_against_peer_anchors(state) -> None:
    # Route: an insider who can write the key file replaces the bank's key with its own and
    # re-HMACs the edited chain: the bank's own chain verifies, but the insurer and payments
    # anchored the real one.
    fed, folder = state
    path = folder / "bank.jsonl"
    mine = bytes(range(32))
    (folder / "bank.ledger-key").write_text(mine.hex() + "\n")
    objs = hide_bobs_spending(rows(path))
    key = None if objs[0]["mac"] == "sha256" else mine
    write(path, rechain(objs, key))
    assert Ledger(path, "bank").verify().ok  # undetectable from the bank's ledger alone
    results = verify_all(open_all(folder))
    assert not results["bank"].ok
    text = failures(results, "bank")
    assert "insurer" in text and "payments" in text and "rewritten" in text
    assert all(results[p].ok for p in ("insurer", "payments"))
    assert cli("ledger", "verify", "-f", str(fed)).exit_code == 3


def test_downgrade_with_key_file_deleted_fails_against_peer_anchor(state) -> None:
    # Route: delete the key file and rewrite the edited chain as a plain SHA-256 ledger, so it
    # looks like a ledger made before ledger keys: it verifies alone (with a warning), but
    # not against the anchors the peers hold.
    fed, folder = state
    path = folder / "bank.jsonl"
    (folder / "bank.ledger-key").unlink(missing_ok=True)
    objs = hide_bobs_spending(rows(path))
    objs[0]["mac"] = "sha256"
    write(path, rechain(objs, None))
    results = verify_all(open_all(folder))
    assert not results["bank"].ok
    assert "entry" in failures(results, "bank") and "insurer" in failures(results, "bank")
    res = cli("ledger", "verify", "-f", str(fed))
    assert res.exit_code == 3 and "not keyed" in res.stderr


# ------------------------------------------------------------------ truncate and delete


def test_truncated_tail_fails_verify_against_peer_anchor(state) -> None:
    # Route: cut the last join's entries off the bank's ledger; what is left is a valid chain
    # (it verified alone before anchors), and the last query's charge is gone.
    fed, folder = state
    path = folder / "bank.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    assert Ledger(path, "bank").verify().ok  # a valid prefix
    results = verify_all(open_all(folder))
    assert not results["bank"].ok
    text = failures(results, "bank")
    assert "ledger of bank has" in text and "insurer holds an anchor" in text
    assert "deleted from the end" in text
    res = cli("ledger", "verify", "-f", str(fed))
    assert res.exit_code == 3 and "bank" in res.stderr


def test_truncation_hidden_from_one_peer_still_fails_against_the_other(state) -> None:
    # Route: cut the tail and also edit the insurer's anchor file so its latest anchor for
    # the bank is the new head; the payments node still holds the real head.
    fed, folder = state
    path = folder / "bank.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    seq, head = Ledger(path, "bank").head()
    anchors = folder / "insurer.anchors.jsonl"
    forged = []
    for line in anchors.read_text().splitlines():
        a = json.loads(line)
        if a["party"] == "bank" and a["seq"] > seq:
            a.update(seq=seq, hash=head)
        forged.append(json.dumps(a, sort_keys=True, separators=(",", ":")) + "\n")
    anchors.write_text("".join(forged))
    results = verify_all(open_all(folder))
    assert not results["bank"].ok
    text = failures(results, "bank")
    assert "payments holds an anchor" in text and "insurer holds" not in text


def test_deleted_ledger_file_fails_verify(state) -> None:
    # Route: delete the bank's ledger, which used to verify as "no ledger yet".
    fed, folder = state
    (folder / "bank.jsonl").unlink()
    res = cli("ledger", "verify", "-f", str(fed))
    assert res.exit_code == 3
    assert "ledger of bank is missing; insurer holds an anchor at entry" in res.stdout
    assert "MISSING" in res.stdout


def test_deleted_ledger_and_key_fails_verify_against_peer_anchor(state) -> None:
    # Route: delete the ledger and its key file, leaving no trace at the bank at all.
    fed, folder = state
    (folder / "bank.jsonl").unlink()
    (folder / "bank.ledger-key").unlink(missing_ok=True)
    results = verify_all(open_all(folder))
    assert not results["bank"].ok and results["bank"].problems[0].kind == "missing"
    assert "payments holds an anchor" in failures(results, "bank")
    assert cli("ledger", "verify", "-f", str(fed)).exit_code == 3


def test_deleting_the_ledger_to_reset_the_budget_is_refused(state) -> None:
    # Route: delete the bank's ledger so that its node starts a fresh one with bob's whole
    # budget available again; the node must refuse to serve instead.
    fed, folder = state
    (folder / "bank.jsonl").unlink()
    with veilql.connect(fed, analyst="bob") as s, pytest.raises(VeilError) as info:
        s.sql(BANK_ONLY, epsilon=1.0)
    assert info.value.exit_code == 3
    assert not (folder / "bank.jsonl").exists()  # no fresh ledger was started


# ------------------------------------------------------------------ the anchors themselves


def test_forked_chain_shown_to_peers_fails_verify(tmp_path: Path) -> None:
    # Route: the bank keeps two chains and shows the insurer the head of one, later the head
    # of the other at the same position; the insurer records both (node API).
    ledgers = {p: Ledger(tmp_path / f"{p}.jsonl", p) for p in ("bank", "insurer")}
    bob = Analyst("bob", 3.0)
    ledgers["bank"].commit(ledgers["bank"].reserve(bob, 0.5, query_id="q1"))
    seq, head = ledgers["bank"].head()
    ledgers["insurer"].record_anchor("bank", seq, head, "q1")
    ledgers["insurer"].record_anchor("bank", seq, "f" * 64, "q2")
    assert ledgers["insurer"].anchors() == {"bank": (seq, "f" * 64)}
    results = verify_all(ledgers)
    assert not results["bank"].ok
    assert "insurer holds two different hashes for entry 2 of bank" in failures(results, "bank")


def test_garbled_peer_anchor_file_fails_verify(state) -> None:
    # Route: destroy the evidence by overwriting the insurer's anchor file with garbage.
    fed, folder = state
    anchors = folder / "insurer.anchors.jsonl"
    anchors.write_text("{}\n" * len(anchors.read_text().splitlines()))
    results = verify_all(open_all(folder))
    assert not results["insurer"].ok
    assert results["insurer"].problems[0].kind == "anchor-file"
    assert cli("ledger", "verify", "-f", str(fed)).exit_code == 3


def test_reservation_left_open_by_a_lost_node_fails_verify(state) -> None:
    # Route: a node reserves and then never commits or aborts (it crashed or lost track),
    # which leaves a charge standing that nobody settled.
    fed, folder = state
    bank = Ledger(folder / "bank.jsonl", "bank")
    bank.reserve(Analyst("bob", 3.0, 1e-6), 0.125, query_id="q-lost", sql=BANK_ONLY)
    later = datetime.now(UTC) + timedelta(minutes=5)
    results = verify_all(open_all(folder), max_open_age=60, now=later)
    assert not results["bank"].ok
    (problem,) = results["bank"].problems
    assert problem.kind == "open-reservation"
    assert problem.message.startswith("open reservation q-lost since 20")
    res = cli("ledger", "verify", "-f", str(fed), "--max-open-age", "0")
    assert res.exit_code == 3 and "open reservation q-lost" in res.stdout


# ------------------------------------------------------------------ the compliance report


def test_report_shows_failure_banner_for_tampered_ledger(state, tmp_path: Path) -> None:
    # Route: cut the bank's tail (a valid prefix) and hand the compliance officer a report.
    fed, folder = state
    path = folder / "bank.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    for fmt in ("json", "html", "pdf"):
        out = tmp_path / f"r.{fmt}"
        res = cli("report", "-f", str(fed), "--format", fmt, "-o", str(out))
        assert res.exit_code == 3, (fmt, res.output)
        assert "integrity check FAILED for bank" in res.output
        data = out.read_bytes()
        if fmt == "json":
            integrity = json.loads(data)["integrity"]
            assert integrity["ok"] is False and integrity["failed"] == ["bank"]
            bank = integrity["parties"]["bank"]
            text = " ".join(p["message"] for p in bank["problems"])
            assert "insurer holds an anchor" in text and "payments holds an anchor" in text
            assert {p["kind"] for p in bank["problems"]} == {"anchor"}
            assert {a["holder"]: a["matches"] for a in bank["anchors"]} == {
                "payments": False, "insurer": False}
        elif fmt == "html":
            assert b'class="banner fail"' in data and b"LEDGER INTEGRITY CHECK FAILED" in data
        else:
            assert b"FAILED: bank" in data


def test_report_json_shows_heads_and_anchors_and_a_deleted_ledger(state) -> None:
    # Route: delete the insurer's ledger; the report must not call it "nothing charged".
    fed, folder = state
    clean = json.loads(render(collect(load_federation(fed)), "json"))["integrity"]
    bank = clean["parties"]["bank"]
    assert clean["ok"] is True and len(bank["head"]) == 64 and bank["head_seq"] >= 0
    assert {a["holder"] for a in bank["anchors"]} == {"insurer", "payments"}
    assert all(a["matches"] for a in bank["anchors"])
    (folder / "insurer.jsonl").unlink()
    gone = json.loads(render(collect(load_federation(fed)), "json"))["integrity"]
    insurer = gone["parties"]["insurer"]
    assert gone["ok"] is False and insurer["exists"] is False and insurer["ok"] is False
    assert "ledger of insurer is missing" in " ".join(p["message"] for p in insurer["problems"])
