"""Tests of the per-party privacy-budget ledger (veilql/engine/ledger)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import filelock
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veilql.engine.ledger import (
    BudgetRefused,
    Ledger,
    LedgerBusy,
    LedgerCorrupt,
    LedgerError,
    PartiesRefused,
    abort_all,
    commit_all,
    ledger_path,
    open_ledgers,
    reserve_all,
    verify_all,
)
from veilql.engine.ledger.entries import digest
from veilql.engine.ledger.keys import load_key
from veilql.engine.ledger.money import decode, encode, fmt, to_fraction
from veilql.errors import BudgetExceeded, ExitCode
from veilql.policies.model import Analyst, Federation, Party

ALICE = Analyst("alice", epsilon=1.0, delta=1e-6)
SPAWN = multiprocessing.get_context("spawn")


def make(tmp_path: Path, party: str = "bank", **kw) -> Ledger:
    """A fresh ledger for ``party`` under ``tmp_path``."""
    return Ledger(tmp_path / f"{party}.jsonl", party, **kw)


def lines(ledger: Ledger) -> list[bytes]:
    """The ledger file's lines, newlines kept."""
    return ledger.path.read_bytes().splitlines(keepends=True)


def write_lines(ledger: Ledger, new: list[bytes]) -> None:
    """Overwrite the ledger file with ``new`` (tampering, for the tests)."""
    ledger.path.write_bytes(b"".join(new))


def reseal(line: bytes, key: bytes | None = None, **changes) -> bytes:
    """``line`` with ``changes`` applied and its own hash recomputed, as a forger would."""
    obj = json.loads(line)
    obj.update(changes)
    obj.pop("hash")
    obj["hash"] = digest(obj, key)
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def key_of(ledger: Ledger) -> bytes | None:
    """The key in ``ledger``'s key file: what the party itself (or a thief) would use."""
    return load_key(ledger.key_path)


def populated(tmp_path: Path, **kw) -> Ledger:
    """genesis, then three committed queries of 0.1: seven entries (indexes 0-6)."""
    led = make(tmp_path, **kw)
    for i in range(3):
        led.commit(led.reserve(ALICE, 0.1, 0, query_id=f"q{i}", sql=f"SELECT {i}",
                               tables=["loans"]))
    assert len(lines(led)) == 7
    return led


# ---------------------------------------------------------------- exact arithmetic


def test_money_conversions_are_exact() -> None:
    assert to_fraction(0.1) == Fraction(1, 10)
    assert to_fraction(1e-6) == Fraction(1, 10**6)
    assert to_fraction(Decimal("0.1")) == to_fraction("1/10") == to_fraction(Fraction(1, 10))
    assert Fraction(0.1) * 10 != 1  # why repr is used: the binary value drifts
    assert encode(Fraction(1, 10**6)) == "0.000001"
    assert encode(Fraction(5, 2)) == "2.5"
    assert encode(Fraction(7)) == "7"
    assert fmt(Fraction(1)) == "1.0" and fmt(Fraction(1, 10**6)) == "1e-06"
    for bad in (-0.1, float("nan"), float("inf"), True, "abc"):
        with pytest.raises(ValueError):
            to_fraction(bad)


@given(st.fractions(min_value=0, max_value=10**6, max_denominator=10**9))
def test_encode_decode_round_trip(value: Fraction) -> None:
    assert decode(encode(value)) == value


def test_ten_tenths_fit_one_and_the_eleventh_is_refused(tmp_path: Path) -> None:
    led = make(tmp_path)
    for _ in range(10):
        led.commit(led.reserve(ALICE, 0.1, 0, sql="SELECT COUNT(*) FROM bank.loans"))
    assert led.spent("alice") == (Fraction(1), Fraction(0))
    assert led.remaining(ALICE) == (Fraction(0), Fraction(1, 10**6))
    with pytest.raises(BudgetRefused) as info:
        led.reserve(ALICE, 0.1, 0)
    assert info.value.exit_code == ExitCode.BUDGET == 4
    assert "requested epsilon 0.1, remaining 0.0, short by 0.1" in str(info.value)
    assert led.spent("alice") == (Fraction(1), Fraction(0))
    assert led.verify().ok


def test_sequence_stops_exactly_where_the_budget_ends(tmp_path: Path) -> None:
    led = make(tmp_path)
    for _ in range(3):
        led.commit(led.reserve(ALICE, 0.3, 0))
    before = lines(led)
    with pytest.raises(BudgetRefused) as info:
        led.reserve(ALICE, 0.3, 0)
    assert info.value.requested == (Fraction(3, 10), Fraction(0))
    assert info.value.remaining == (Fraction(1, 10), Fraction(1, 10**6))
    assert "requested epsilon 0.3, remaining 0.1, short by 0.2" in str(info.value)
    assert lines(led) == before  # a refusal writes nothing
    led.commit(led.reserve(ALICE, 0.1, 0))  # exactly the rest fits
    assert led.remaining(ALICE)[0] == 0
    with pytest.raises(BudgetRefused):
        led.reserve(ALICE, Fraction(1, 10**12), 0)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(costs=st.lists(st.integers(0, 60), min_size=1, max_size=12), budget=st.integers(0, 200))
def test_accepts_exactly_while_the_running_sum_fits(
    tmp_path_factory: pytest.TempPathFactory, costs: list[int], budget: int,
) -> None:
    led = make(tmp_path_factory.mktemp("prop"))
    analyst = Analyst("alice", epsilon=budget / 100)
    total = 0
    for c in costs:
        if total + c <= budget:
            led.reserve(analyst, c / 100)  # floats like 0.07, converted exactly
            total += c
        else:
            with pytest.raises(BudgetRefused):
                led.reserve(analyst, c / 100)
    assert led.spent("alice")[0] == Fraction(total, 100)


def test_delta_is_accounted_separately(tmp_path: Path) -> None:
    led = make(tmp_path)
    analyst = Analyst("alice", epsilon=10.0, delta=1e-6)
    for _ in range(3):
        led.commit(led.reserve(analyst, 1.0, 3e-7))
    assert led.spent("alice") == (Fraction(3), Fraction(9, 10**7))
    with pytest.raises(BudgetRefused) as info:
        led.reserve(analyst, 1.0, 3e-7)
    text = str(info.value)
    assert "requested delta 3e-07, remaining 1e-07, short by 2e-07" in text
    assert "epsilon" not in text.split("bank:")[1]  # epsilon is not short
    led.commit(led.reserve(analyst, 1.0, 0))  # pure epsilon-DP still fits
    led.commit(led.reserve(analyst, 1.0, 1e-7))  # the exact rest of delta fits
    assert led.remaining(analyst) == (Fraction(5), Fraction(0))


def test_abort_gives_back_and_commit_keeps(tmp_path: Path) -> None:
    led = make(tmp_path)
    first = led.reserve(ALICE, 0.6, 0, query_id="q1")
    assert led.spent("alice")[0] == Fraction(3, 5)  # an open reservation counts as spent
    with pytest.raises(BudgetRefused):
        led.reserve(ALICE, 0.6, 0)
    led.abort(first, "secure join failed")
    led.abort(first, "again")  # idempotent
    assert led.spent("alice") == (0, 0)
    second = led.reserve(ALICE, 0.6, 0, query_id="q2")
    led.commit(second)
    led.commit(second)  # idempotent
    assert led.spent("alice")[0] == Fraction(3, 5)
    with pytest.raises(LedgerError, match="already committed"):
        led.abort(second, "too late")
    with pytest.raises(LedgerError, match="already aborted"):
        led.commit(first)
    assert [e.kind for e in led.entries()] == ["genesis", "reserve", "abort", "reserve", "commit"]
    assert led.verify().ok


def test_reserve_with_commit_appends_both_entries_in_one_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``reserve(commit=True)`` (a query no other party admits): the same reserve and
    commit entries as the two calls, in one durable write once the ledger has its genesis;
    the charge then stands (no abort), a commit is a no-op, and a refusal appends only the
    refusal."""
    from veilql.engine.ledger import ledger as ledger_module

    writes: list[bytes] = []
    real = ledger_module.append_durably
    monkeypatch.setattr(ledger_module, "append_durably",
                        lambda path, line: (writes.append(line), real(path, line))[1])
    led = make(tmp_path, key=b"k" * 32)
    first = led.reserve(ALICE, 0.25, 0, query_id="q1", sql="SELECT 1", tables=["loans"],
                        commit=True)  # a new ledger: genesis, reserve, commit
    assert first.committed and len(writes) == 3
    second = led.reserve(ALICE, 0.25, 1e-7, query_id="q2", sql="SELECT 2",
                         tables=["loans"], commit=True)
    assert second.committed and len(writes) == 4 and writes[-1].count(b"\n") == 2
    assert [e.kind for e in led.entries()] == ["genesis", "reserve", "commit", "reserve",
                                                "commit"]
    reserve, commit = (json.loads(x) for x in lines(led)[3:])
    assert reserve["status"] == "reserved" and commit["status"] == "committed"
    assert commit["ref"] == reserve["seq"] == 3 and commit["prev"] == reserve["hash"]
    assert commit["query_id"] == "q2" and commit["delta"] == "0.0000001"
    led.commit(second)  # idempotent: nothing appended
    assert len(writes) == 4
    with pytest.raises(LedgerError, match="already committed"):
        led.abort(second, "too late")
    assert led.spent("alice")[0] == Fraction(1, 2) and not led.open_reservations()
    assert [c.status for c in led.history()] == ["committed", "committed"]
    with pytest.raises(BudgetRefused):
        led.reserve(ALICE, 0.75, 0, query_id="q3", commit=True, record_refusal=True)
    assert [e.kind for e in led.entries()][-1] == "refused"
    assert led.verify().ok and make(tmp_path, key=b"k" * 32).verify().ok  # re-read cold


def test_entries_carry_what_compliance_reports_need(tmp_path: Path) -> None:
    led = make(tmp_path)
    r = led.reserve(ALICE, 0.5, 1e-7, query_id="q-7", sql="SELECT region, COUNT(*) ...",
                    tables=["loans", "customers"])
    led.abort(r, "party insurer unavailable")
    reserve, abort = (json.loads(x) for x in lines(led)[1:])
    for obj, status in ((reserve, "reserved"), (abort, "aborted")):
        assert obj["analyst"] == "alice" and obj["query_id"] == "q-7"
        assert obj["sql"] == "SELECT region, COUNT(*) ..."
        assert obj["epsilon"] == "0.5" and obj["delta"] == "0.0000001"
        assert obj["tables"] == ["loans", "customers"] and obj["status"] == status
        assert obj["time"].endswith("+00:00") and obj["party"] == "bank"
    assert abort["reason"] == "party insurer unavailable" and abort["ref"] == 1
    assert reserve["budget_epsilon"] == "1" and reserve["budget_delta"] == "0.000001"


def test_history_filters_by_analyst_and_time(tmp_path: Path) -> None:
    led = make(tmp_path)
    bob = Analyst("bob", epsilon=1.0)
    led.commit(led.reserve(ALICE, 0.1, query_id="a1"))
    cut = json.loads(lines(led)[-1])["time"]
    time.sleep(0.002)
    led.abort(led.reserve(bob, 0.2, query_id="b1"), "failed")
    led.reserve(ALICE, 0.3, query_id="a2")
    hist = led.history()
    assert [(c.query_id, c.status) for c in hist] == [
        ("a1", "committed"), ("b1", "aborted"), ("a2", "reserved")]
    assert [c.query_id for c in led.history(analyst="alice")] == ["a1", "a2"]
    assert [c.query_id for c in led.history(since=cut)] == ["b1", "a2"]
    assert [c.query_id for c in led.history(since="2999-01-01")] == []
    assert hist[1].reason == "failed" and hist[2].settled_at is None


# ---------------------------------------------------------------- concurrency and crashes


# The child's code runs through ``exec`` (a builtin, so spawn pickles it by name): each child
# then imports only the ledger, not this test module with pytest and hypothesis, which halves
# the start-up of twelve interpreters on two cores.
_ONE_QUERY = """
import sys, time
from veilql.engine.ledger import Ledger
from veilql.errors import BudgetExceeded
from veilql.policies.model import Analyst
led = Ledger(PATH, "bank")
BARRIER.wait()
try:
    r = led.reserve(Analyst("alice", epsilon=5.0), 1.0, sql="SELECT 1", tables=["loans"])
except BudgetExceeded as exc:
    sys.exit(int(exc.exit_code))
time.sleep(0.02)  # the secure computation and the release
led.commit(r)
"""


def test_twelve_concurrent_processes_release_exactly_five(tmp_path: Path) -> None:
    path = tmp_path / "bank.jsonl"
    barrier = SPAWN.Barrier(12)
    code = {"PATH": str(path), "BARRIER": barrier}
    procs = [SPAWN.Process(target=exec, args=(_ONE_QUERY, code)) for _ in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    codes = sorted(p.exitcode for p in procs)
    assert codes == [0] * 5 + [4] * 7
    led = Ledger(path, "bank")
    assert led.verify().ok
    assert led.spent("alice") == (Fraction(5), Fraction(0))
    assert [c.status for c in led.history()] == ["committed"] * 5


def test_threads_sharing_one_ledger_never_overspend(tmp_path: Path) -> None:
    led = make(tmp_path)
    analyst = Analyst("alice", epsilon=5.0)
    outcomes: list[str] = []

    def one() -> None:
        try:
            led.commit(led.reserve(analyst, 1))
            outcomes.append("released")
        except BudgetRefused:
            outcomes.append("refused")

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["refused"] * 5 + ["released"] * 5
    assert led.verify().ok and led.spent("alice")[0] == 5


def test_a_held_lock_is_waited_for_then_reported(tmp_path: Path) -> None:
    led = make(tmp_path, timeout=0.3)
    other = filelock.FileLock(f"{led.path}.lock")
    other.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(LedgerBusy) as info:
            led.reserve(ALICE, 0.1)
        assert time.monotonic() - started >= 0.3
        assert info.value.exit_code == 3 and info.value.hint
    finally:
        other.release()
    led.reserve(ALICE, 0.1)
    assert led.spent("alice")[0] == Fraction(1, 10)


def _reserve_then_die(path: str) -> None:
    """Child process: reserve, then crash before releasing or committing."""
    Ledger(path, "bank").reserve(ALICE, 0.4, query_id="crashed", sql="SELECT 1")
    os._exit(9)


def _hold_lock_then_die(path: str) -> None:
    """Child process: take the ledger lock, then crash while holding it."""
    filelock.FileLock(path + ".lock").acquire()
    os._exit(9)


def _spend_forever(path: str) -> None:
    """Child process: reserve and commit tiny queries until killed."""
    led = Ledger(path, "bank")
    analyst = Analyst("alice", epsilon=10**6)
    while True:
        led.commit(led.reserve(analyst, 0.001, sql="SELECT 1"))


def test_crash_between_reserve_and_commit_stays_charged(tmp_path: Path) -> None:
    path = str(tmp_path / "bank.jsonl")
    child = SPAWN.Process(target=_reserve_then_die, args=(path,))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    led = Ledger(path, "bank", timeout=10)
    assert led.verify().ok
    assert led.spent("alice")[0] == Fraction(2, 5)
    assert [r.query_id for r in led.open_reservations()] == ["crashed"]
    with pytest.raises(BudgetRefused):
        led.reserve(ALICE, 0.7)

    holder = SPAWN.Process(target=_hold_lock_then_die, args=(path,))
    holder.start()
    holder.join(60)
    started = time.monotonic()
    led.commit(led.reserve(ALICE, 0.6))  # the dead holder's lock was released by the kernel
    assert time.monotonic() - started < 5
    assert led.verify().ok and led.remaining(ALICE)[0] == 0


def test_sigkill_during_writes_leaves_a_verifiable_ledger(tmp_path: Path) -> None:
    path = str(tmp_path / "bank.jsonl")
    child = SPAWN.Process(target=_spend_forever, args=(path,))
    child.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        not os.path.exists(path) or os.path.getsize(path) < 20_000
    ):
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    led = Ledger(path, "bank")
    if not led.verify().ok:  # only a torn last line is acceptable, and repair fixes it
        assert led.repair()
    result = led.verify()
    assert result.ok and result.entries > 10
    hist = led.history()
    assert len(led.open_reservations()) <= 1
    assert led.spent("alice")[0] == Fraction(len(hist), 1000)


# ---------------------------------------------------------------- tamper evidence


def test_edit_fails_at_the_edited_entry(tmp_path: Path) -> None:
    led = populated(tmp_path)
    rows = lines(led)
    rows[3] = rows[3].replace(b'"epsilon":"0.1"', b'"epsilon":"0.01"')
    write_lines(led, rows)
    result = Ledger(led.path, "bank").verify()
    assert not result.ok and result.bad_index == 3 and "hash" in (result.problem or "")


def test_edit_with_recomputed_hash_fails_at_the_next_entry(tmp_path: Path) -> None:
    led = populated(tmp_path)
    rows = lines(led)
    rows[3] = reseal(rows[3], key_of(led), epsilon="0.01")  # even with the party's key
    write_lines(led, rows)
    result = led.verify()
    assert (result.ok, result.bad_index) == (False, 4) and "prev" in (result.problem or "")


def test_deletion_reordering_insertion_and_truncation(tmp_path: Path) -> None:
    led = populated(tmp_path)
    orig = lines(led)
    cases = {
        "deleted": (orig[:3] + orig[4:], 3, "seq"),
        "swapped": (orig[:3] + [orig[4], orig[3]] + orig[5:], 3, "seq"),
        "duplicate inserted": (orig[:5] + [orig[2]] + orig[5:], 5, "seq"),
        "forged inserted": (orig[:5] + [reseal(orig[3], key_of(led), seq=5,
                                               prev=json.loads(orig[4])["hash"])]
                            + orig[5:], 6, "seq"),
        "truncated": (orig[:6] + [orig[6][:40]], 6, "truncated"),
        "blank line": (orig[:2] + [b"\n"] + orig[2:], 2, "empty"),
        "garbage": (orig[:2] + [b"{not json\n"] + orig[3:], 2, "JSON"),
    }
    for name, (rows, index, word) in cases.items():
        write_lines(led, rows)
        result = led.verify()
        assert not result.ok, name
        assert result.bad_index == index, (name, result)
        assert word in (result.problem or ""), (name, result)
    write_lines(led, orig)
    assert led.verify().ok


def test_damaged_ledger_refuses_to_charge(tmp_path: Path) -> None:
    led = populated(tmp_path)
    rows = lines(led)
    write_lines(led, rows[:2] + rows[3:])  # delete a commit...
    before = led.path.read_bytes()
    with pytest.raises(LedgerCorrupt) as info:
        led.reserve(ALICE, 0.1)  # ...noticed by the tail re-read, and nothing is written
    assert info.value.exit_code == 3 and "entry 2" in str(info.value) and info.value.hint
    assert led.path.read_bytes() == before
    with pytest.raises(LedgerCorrupt):
        Ledger(led.path, "bank").spent("alice")


def test_repair_drops_only_a_torn_tail_and_records_it(tmp_path: Path) -> None:
    led = populated(tmp_path)
    assert not led.repair()
    rows = lines(led)
    write_lines(led, rows + [rows[1][:30]])
    with pytest.raises(LedgerCorrupt, match="truncated"):
        led.reserve(ALICE, 0.1)
    assert led.repair()
    assert led.verify().ok
    last = led.entries()[-1]
    assert last.kind == "repair" and last.discarded == rows[1][:30].decode()
    write_lines(led, rows[:3] + rows[4:] + [b"{"])
    with pytest.raises(LedgerCorrupt):  # other damage is not "repaired" away
        led.repair()


def test_plain_chain_limits_and_what_anchors_and_keys_add(tmp_path: Path) -> None:
    led = populated(tmp_path, key_file=False)  # a ledger made before ledger keys
    assert not led.key_path.exists()
    anchor = led.head()
    assert anchor[0] == 6
    orig = lines(led)
    # Rewriting the whole chain from entry 3 on (reserve q1 and its commit now say 0.01)
    # passes a plain chain: a documented limit...
    forged = orig[:3]
    for i, row in enumerate(orig[3:], start=3):
        extra = {"epsilon": "0.01"} if i in (3, 4) else {}
        forged.append(reseal(row, prev=json.loads(forged[-1])["hash"], **extra))
    write_lines(led, forged)
    assert led.verify().ok
    result = led.verify(anchor=anchor)
    assert (result.ok, result.bad_index) == (False, 6) and "anchor" in (result.problem or "")
    # Dropping whole trailing entries also passes alone, but not against the anchor.
    write_lines(led, orig[:5])
    assert led.verify().ok
    assert led.verify(anchor=anchor).bad_index == 5

    keyed = populated(tmp_path / "k", key=b"bank-secret")
    rows = lines(keyed)
    rows[3] = reseal(rows[3], epsilon="0.01")  # a forger without the key uses plain SHA-256
    write_lines(keyed, rows)
    assert keyed.verify().bad_index == 3
    unkeyed = Ledger(keyed.path, "bank").verify()
    assert unkeyed.bad_index == 0 and "without a key" in (unkeyed.problem or "")


def test_ledger_of_another_party_is_rejected(tmp_path: Path) -> None:
    led = populated(tmp_path)
    result = Ledger(led.path, "insurer", key=key_of(led)).verify()
    assert (result.ok, result.bad_index) == (False, 0) and "bank" in (result.problem or "")
    other = make(tmp_path, "insurer")
    r = led.reserve(ALICE, 0.1)
    with pytest.raises(LedgerError, match="party 'bank'"):
        other.commit(r)


# ---------------------------------------------------------------- several parties


def _three(tmp_path: Path) -> dict[str, Ledger]:
    return {p: make(tmp_path, p) for p in ("payments", "bank", "insurer")}


def test_reserve_all_charges_every_party_read(tmp_path: Path) -> None:
    ledgers = _three(tmp_path)
    rs = reserve_all(ledgers, ALICE, 0.5, 1e-7, sql="SELECT ...", query_id="q1",
                     tables={"insurer": ["claims"], "bank": ["loans", "customers"]})
    assert [r.party for r in rs] == ["bank", "insurer"]  # sorted, payments not read
    commit_all(ledgers, rs)
    assert ledgers["bank"].spent("alice") == (Fraction(1, 2), Fraction(1, 10**7))
    assert ledgers["payments"].spent("alice") == (0, 0)
    assert ledgers["bank"].history()[0].tables == ("loans", "customers")
    assert ledgers["insurer"].history()[0].query_id == "q1"
    assert all(v.ok for v in verify_all(ledgers).values())


def test_refusal_names_each_refusing_party_and_charges_nothing(tmp_path: Path) -> None:
    ledgers = _three(tmp_path)
    commit_all(ledgers, reserve_all(ledgers, ALICE, 0.5, tables={"bank": ["loans"]}))
    commit_all(ledgers, reserve_all(ledgers, ALICE, 0.8, 1e-6, tables={"insurer": ["claims"]}))
    before = {p: led.path.read_bytes() if led.path.exists() else b""
              for p, led in ledgers.items()}
    with pytest.raises(PartiesRefused) as info:
        reserve_all(ledgers, ALICE, 1.0, 1e-7,
                    tables={"bank": ["loans"], "insurer": ["claims"], "payments": ["tx"]})
    err = info.value
    assert isinstance(err, BudgetExceeded) and err.exit_code == 4
    assert str(err) == (
        "privacy budget of analyst 'alice' would be exceeded at 2 parties: "
        "bank: requested epsilon 1.0, remaining 0.5, short by 0.5; "
        "insurer: requested epsilon 1.0, remaining 0.2, short by 0.8 and "
        "requested delta 1e-07, remaining 0.0, short by 1e-07"
    )
    assert "ask for less" in (err.hint or "") and "raise" in (err.hint or "")
    assert [r.party for r in err.refusals] == ["bank", "insurer"]
    after = {p: led.path.read_bytes() if led.path.exists() else b""
             for p, led in ledgers.items()}
    assert after == before  # nothing charged, nothing even written


def test_lost_race_aborts_what_was_reserved(tmp_path: Path, monkeypatch) -> None:
    ledgers = _three(tmp_path)
    commit_all(ledgers, reserve_all(ledgers, ALICE, 0.9, tables={"insurer": ["claims"]}))
    # Another client spends between the check and the reservation: the check says yes.
    monkeypatch.setattr(ledgers["insurer"], "check", lambda *a, **k: None)
    with pytest.raises(PartiesRefused, match="insurer: requested epsilon 0.5, remaining 0.1"):
        reserve_all(ledgers, ALICE, 0.5, tables={"bank": ["loans"], "insurer": ["claims"]})
    bank = ledgers["bank"]
    assert bank.spent("alice") == (0, 0)
    assert [c.status for c in bank.history()] == ["aborted"]
    assert "refused at insurer" in (bank.history()[0].reason or "")


def test_abort_all_settles_every_party_despite_a_failure(tmp_path: Path) -> None:
    ledgers = _three(tmp_path)
    rs = reserve_all(ledgers, ALICE, 0.3, tables={"bank": ["loans"], "payments": ["tx"]})
    ledgers["bank"].commit(rs[0])  # bank already committed: its abort must fail
    with pytest.raises(LedgerError, match="already committed"):
        abort_all(ledgers, rs, "failed")
    assert ledgers["payments"].spent("alice") == (0, 0)  # still aborted after bank's failure
    assert ledgers["bank"].spent("alice")[0] == Fraction(3, 10)


def test_ledger_paths_from_the_federation(tmp_path: Path) -> None:
    fed = Federation(name="demo", path=tmp_path / "federation.toml",
                     parties=(Party("bank", "local", "duckdb:x"),
                              Party("insurer", "local", "duckdb:y")))
    assert ledger_path(fed, "bank") == tmp_path / "ledgers" / "bank.jsonl"
    ledgers = open_ledgers(fed, keys={"bank": b"k"})
    assert sorted(ledgers) == ["bank", "insurer"]
    ledgers["bank"].reserve(ALICE, 0.1)
    assert (tmp_path / "ledgers" / "bank.jsonl").exists()
    assert json.loads(lines(ledgers["bank"])[0])["mac"] == "hmac-sha256"


# ---------------------------------------------------------------- ledger keys


def test_new_ledger_gets_a_secret_key_file_and_an_hmac_chain(tmp_path: Path) -> None:
    led = populated(tmp_path)
    key = key_of(led)
    assert led.key_path == tmp_path / "bank.ledger-key"
    assert key is not None and len(key) == 32
    assert led.key_path.stat().st_mode & 0o777 == 0o600
    assert json.loads(lines(led)[0])["mac"] == "hmac-sha256"
    again = Ledger(led.path, "bank")  # every caller loads the key from beside the ledger
    result = again.verify()
    assert result.ok and result.keyed is True and result.warnings == ()
    assert again.remaining(ALICE)[0] == Fraction(7, 10)
    # the chain really is keyed: the same content under plain SHA-256 does not verify
    assert Ledger(led.path, "bank", key=b"another key").verify().bad_index == 0


def test_key_less_ledger_keeps_working_without_a_key_and_warns(tmp_path: Path) -> None:
    old = populated(tmp_path, key_file=False)  # as made before ledger keys existed
    assert json.loads(lines(old)[0])["mac"] == "sha256"
    led = Ledger(old.path, "bank")
    led.commit(led.reserve(ALICE, 0.1, query_id="q-new"))
    assert not led.key_path.exists()  # an existing plain chain is never switched to a key
    result = led.verify()
    assert result.ok and result.keyed is False and result.entries == 9
    assert len(result.warnings) == 1 and result.warnings[0].startswith("not keyed")
    assert verify_all({"bank": led})["bank"].ok


def test_ledger_whose_key_remains_but_file_is_gone_refuses_to_serve(tmp_path: Path) -> None:
    led = populated(tmp_path)
    led.path.unlink()
    with pytest.raises(LedgerCorrupt, match="missing but its key"):
        Ledger(led.path, "bank").reserve(ALICE, 0.1)
    assert not led.path.exists()  # no fresh ledger with the whole budget
    result = Ledger(led.path, "bank").verify()
    assert not result.ok and not result.exists and result.problems[0].kind == "missing"
    led.path.write_bytes(b"")  # emptied rather than deleted: the same
    with pytest.raises(LedgerCorrupt, match="empty but its key"):
        Ledger(led.path, "bank").spent("alice")


def test_unusable_key_file_is_an_error_not_a_silent_plain_chain(tmp_path: Path) -> None:
    led = populated(tmp_path)
    led.key_path.write_text("not hex\n")
    with pytest.raises(LedgerError, match="is not a key"):
        Ledger(led.path, "bank").spent("alice")
    result = Ledger(led.path, "bank").verify()
    assert not result.ok and result.problems[0].kind == "key"
    led.key_path.unlink()
    result = Ledger(led.path, "bank").verify()
    assert result.bad_index == 0 and "bank.ledger-key is missing" in (result.problem or "")


# ---------------------------------------------------------------- anchors


def test_record_anchor_keeps_the_latest_head_per_party(tmp_path: Path) -> None:
    bank, insurer = make(tmp_path, "bank"), make(tmp_path, "insurer")
    assert bank.anchors() == {}
    for i in range(3):
        insurer.commit(insurer.reserve(ALICE, 0.1, query_id=f"q{i}"))
        seq, head = insurer.head()
        bank.record_anchor("insurer", seq, head, f"q{i}")
    bank.record_anchor("payments", 4, "a" * 64, "q9")
    bank.record_anchor("insurer", 1, insurer.entries()[1].hash, "late")  # out of order
    assert bank.anchors() == {"insurer": insurer.head(), "payments": (4, "a" * 64)}
    assert Ledger(bank.path, "bank").anchors() == bank.anchors()  # durable, re-read
    assert bank.anchors_path == tmp_path / "bank.anchors.jsonl"
    first = json.loads(bank.anchors_path.read_text().splitlines()[0])
    assert first["holder"] == "bank" and first["party"] == "insurer"
    assert first["query_id"] == "q0" and set(first) == {
        "holder", "party", "seq", "hash", "query_id", "time"}


def test_record_anchor_refuses_nonsense(tmp_path: Path) -> None:
    bank = make(tmp_path, "bank")
    with pytest.raises(LedgerError, match="its own ledger"):
        bank.record_anchor("bank", 1, "a" * 64, "q")
    with pytest.raises(LedgerError, match="64 lowercase hex"):
        bank.record_anchor("insurer", 1, "xyz", "q")
    with pytest.raises(LedgerError, match="non-negative"):
        bank.record_anchor("insurer", -1, "a" * 64, "q")
    assert not bank.anchors_path.exists()


def test_torn_anchor_line_is_dropped_before_the_next_append(tmp_path: Path) -> None:
    bank = make(tmp_path, "bank")
    bank.record_anchor("insurer", 1, "a" * 64, "q1")
    with open(bank.anchors_path, "ab") as f:
        f.write(b'{"holder":"bank","par')  # a crash in the middle of an append
    assert bank.anchors() == {"insurer": (1, "a" * 64)}
    bank.record_anchor("insurer", 2, "b" * 64, "q2")
    assert Ledger(bank.path, "bank").anchor_book().damaged == []
    assert bank.anchors() == {"insurer": (2, "b" * 64)}


def test_threads_recording_anchors_never_interleave(tmp_path: Path) -> None:
    bank = make(tmp_path, "bank")
    others = [Ledger(bank.path, "bank") for _ in range(4)]

    def run(led: Ledger, t: int) -> None:
        for i in range(25):
            led.record_anchor("insurer", t * 100 + i, f"{t:x}" * 64, f"q{t}-{i}")

    threads = [threading.Thread(target=run, args=(led, t)) for t, led in enumerate(others)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    book = bank.anchor_book()
    assert book.count == 100 and book.damaged == [] and book.conflicts == []
    assert bank.anchors() == {"insurer": (324, "3" * 64)}


def _anchored(tmp_path: Path) -> dict[str, Ledger]:
    """bank and insurer charged for two queries; each anchors the other's head."""
    ledgers = {p: make(tmp_path, p) for p in ("bank", "insurer")}
    for i in range(2):
        rs = reserve_all(ledgers, ALICE, 0.1, query_id=f"q{i}",
                         tables={"bank": ["loans"], "insurer": ["claims"]})
        commit_all(ledgers, rs)
        for me, other in (("bank", "insurer"), ("insurer", "bank")):
            ledgers[me].record_anchor(other, *ledgers[other].head(), f"q{i}")
    return ledgers


def test_verify_all_checks_each_ledger_against_the_anchors_of_the_others(
        tmp_path: Path) -> None:
    ledgers = _anchored(tmp_path)
    results = verify_all(ledgers)
    assert all(r.ok for r in results.values())
    assert [(a.holder, a.seq) for a in results["bank"].anchors] == [("insurer", 4)]
    orig = lines(ledgers["bank"])
    write_lines(ledgers["bank"], orig[:-1])  # truncated: a valid prefix
    bad = verify_all(ledgers)["bank"]
    assert (bad.ok, bad.bad_index, bad.problems[0].kind, bad.problems[0].holder) == (
        False, 4, "anchor", "insurer")
    assert "ledger of bank has 4 entries but insurer holds an anchor at entry 4" in str(bad)
    write_lines(ledgers["bank"], orig)
    assert verify_all(ledgers)["bank"].ok
    ledgers["bank"].path.unlink()
    gone = verify_all(ledgers)["bank"]
    assert not gone.ok and not gone.exists
    assert "ledger of bank is missing; insurer holds an anchor at entry 4" in str(gone)


def test_verify_all_accepts_a_party_never_charged_and_never_anchored(tmp_path: Path) -> None:
    ledgers = _anchored(tmp_path)
    ledgers["payments"] = make(tmp_path, "payments")
    results = verify_all(ledgers)
    assert results["payments"].ok and not results["payments"].exists
    assert str(results["payments"]) == "no ledger (nothing charged)"
    assert not (tmp_path / "payments.jsonl.lock").exists()  # verifying created nothing


def test_verify_all_reports_old_open_reservations(tmp_path: Path) -> None:
    led = make(tmp_path)
    r = led.reserve(ALICE, 0.25, query_id="q-open")
    soon = datetime.now(UTC) + timedelta(seconds=5)
    assert verify_all({"bank": led}, max_open_age=30, now=soon)["bank"].ok  # still running
    later = datetime.now(UTC) + timedelta(seconds=31)
    old = verify_all({"bank": led}, max_open_age=30, now=later)["bank"]
    assert not old.ok and old.problems[0].kind == "open-reservation"
    assert old.bad_index == r.seq and "open reservation q-open since " in str(old)
    assert led.verify().ok  # the chain itself is fine
    assert verify_all({"bank": led}, max_open_age=None, now=later)["bank"].ok
    led.commit(r)
    assert verify_all({"bank": led}, max_open_age=30, now=later)["bank"].ok


def test_limit_rewriting_a_ledger_and_every_anchor_file_goes_unnoticed(tmp_path: Path) -> None:
    # Documented limit (docs/ledger.md): whoever holds the bank's key and can write every
    # other party's anchor file (all parties' state in hand) rewrites history undetected.
    ledgers = _anchored(tmp_path)
    key = key_of(ledgers["bank"])
    rows = lines(ledgers["bank"])
    forged = rows[:3]
    for i, row in enumerate(rows[3:], start=3):
        extra = {"epsilon": "0.01"} if i in (3, 4) else {}
        forged.append(reseal(row, key, prev=json.loads(forged[-1])["hash"], **extra))
    write_lines(ledgers["bank"], forged)
    assert not verify_all(ledgers)["bank"].ok  # the insurer's anchor still tells
    ledgers["insurer"].anchors_path.unlink()
    ledgers["insurer"].record_anchor("bank", *Ledger(ledgers["bank"].path, "bank").head(), "x")
    assert verify_all(ledgers)["bank"].ok
