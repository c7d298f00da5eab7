"""The oblivious join (``join_reveal = "nothing"``): same answers, nothing revealed.

* every oracle query (``test_oracle.QUERIES``) answers as plain DuckDB at a huge epsilon
  with every table padded to a declared ``max_units``;
* the protocols against numpy: the pair gather, the cuckoo placement, and a whole stage on
  random and edge inputs (no real row, one, two, prime sizes, every unit matched, dummy
  tags colliding with each other);
* leakage: two federations whose intersections differ by one person give every compute
  party the same messages (senders, tags, lengths), and the only opened values (the bins
  the fetchers see) are uniform; the revealing join, as a control, differs;
* refusals (no ``max_units``, private group keys) before any budget is charged, a party over
  its bound fails after the charge with a generic error, and the join cache is reused.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from oracle import (
    HUGE_EPSILON,
    oblivious_federation,
    oracle_federation,
    plain,
    same,
    union_connection,
)
from scipy import stats
from test_oracle import QUERIES

import veilql
import veilql.engine.node as node_module
import veilql.engine.operators.secure_mode as secure_mode
from veilql.engine.mpc.shares import AShare
from veilql.engine.mpc.testing import deterministic_seeds, run_three
from veilql.engine.operators import oblivious_join as oj
from veilql.engine.operators.join import SharedTable
from veilql.engine.plan.nodes import JoinStage, cuckoo_bins
from veilql.engine.rewrite import compile_plan
from veilql.engine.transport.base import read_transcript
from veilql.errors import PolicyError, QueryFailed, UnsupportedError, VeilError
from veilql.policies.loader import load_federation

DEMO = Path(__file__).resolve().parent.parent / "sample_data" / "demo"
GOLDEN = Path(__file__).parent / "golden" / "plans" / "oblivious"
BOUND = 20_000  # the demo has 20,000 people


@pytest.fixture(scope="module")
def oblivious(tmp_path_factory: pytest.TempPathFactory):
    fed = oblivious_federation(DEMO, tmp_path_factory.mktemp("oblivious") / "fed", BOUND)
    session = veilql.connect(fed, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


def _quiet_sql(session, sql: str, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return session.sql(sql, **kw)


# -- answers ----------------------------------------------------------------------------
@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_oblivious_answer_equals_plain_duckdb(oblivious, sql: str) -> None:
    session, con = oblivious
    result = _quiet_sql(session, sql, epsilon=HUGE_EPSILON, delta=0)
    if result.plan.mode == "secure":
        assert result.plan.joins and all(j.mode == "oblivious" for j in result.plan.joins)
        assert "reveals nothing but the declared bounds" in result.plan.to_s()
    expected = plain(con, sql)
    groups = sum(1 for o in result.plan.outputs if o.kind == "group")
    if result.plan.order_by or result.plan.limit is not None:
        assert len(result.rows) == len(expected)
        pairs = list(zip(result.rows, expected, strict=True))
    else:
        by_key = {tuple(str(v) for v in row[:groups]): row for row in result.rows}
        pairs = [(by_key.get(tuple(str(v) for v in row[:groups])), row) for row in expected]
        released = {tuple(str(v) for v in row[:groups]) for row in expected}
        for key, row in by_key.items():
            if key not in released:
                assert all(v in (0, None) for v in row[groups:]), row
    assert pairs
    for got, want in pairs:
        assert got is not None, f"missing group {want}"
        for g, w in zip(got, want, strict=True):
            assert same(g, w, tol=0.011), (got, want)


# -- protocols against numpy ------------------------------------------------------------
@pytest.mark.parametrize("n,m", [(0, 5), (1, 1), (2, 3), (7, 13), (101, 31)])
def test_gather_equals_numpy_at_every_pair(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 100 + m)
    x = rng.integers(-(2**62), 2**62, (m, 2))
    idx = rng.integers(0, m, n)
    for pair in ((0, 1), (1, 2), (2, 0), (1, 0)):
        def prog(rt, xv, iv, pair=pair):
            s = rt.share(0, xv, (m, 2))
            (out,) = rt.gather([s], iv if rt.me in pair else None, pair, n)
            return rt.open(out).view(np.int64)
        got = run_three(prog, [x, None, None], [idx, idx, idx])
        for g in got:
            assert g.shape == (n, 2) and (g == x[idx]).all()


def test_gather_outsider_receives_nothing(tmp_path: Path) -> None:
    """The outsider of the pair (party 2 here) receives no gather message: its new
    components are keystream it draws itself."""
    def prog(rt):
        s = rt.share(0, np.arange(10) if rt.me == 0 else None, 10)
        rt.gather([s], np.arange(5) if rt.me != 2 else None, (0, 1), 5)

    run_three(prog, transcript_dir=str(tmp_path))
    records = _transcripts(tmp_path)
    assert any(t.startswith("gather") for _, t, _ in records["p0"])
    assert any(t.startswith("gather") for _, t, _ in records["p1"])
    assert not any(t.startswith("gather") for _, t, _ in records["p2"])


def test_cuckoo_places_every_row_once() -> None:
    for n in (0, 1, 2, 3, 97, 5000, 100_003):
        size = cuckoo_bins(n)
        t = oj.real_tags(np.frombuffer(np.random.default_rng(n).bytes(8 * n), dtype=np.uint64))
        bins = oj.bins_of(t, size)
        assert ((bins // (size // 3)) == np.arange(3)).all()
        table = oj.place(bins, size)
        rows = table[table >= 0]
        assert sorted(rows.tolist()) == list(range(n))
        where = np.flatnonzero(table >= 0)
        assert (bins[rows] == where[:, None]).any(axis=1).all()  # each row in one of its bins


def _stage_case(n_left: int, left_real: int, right_units: int, matched: int, seed: int):
    """Tags and payloads of a hub and a right party; ``matched`` units on both sides."""
    rng = np.random.default_rng(seed)
    units = rng.permutation(10 * (left_real + right_units) + 10)
    left_units = units[:left_real]
    right_only = units[left_real:left_real + right_units - matched]
    right_units_ = np.concatenate([left_units[:matched], right_only])
    key = bytes(range(16))
    t_left = np.concatenate([oj.real_tags(oj.tags(key, left_units)),
                             oj.random_tags(n_left - left_real, oj._DUMMY)])
    t_right = oj.real_tags(oj.tags(key, right_units_))
    f_right = rng.integers(1, 1000, (len(right_units_), 2, 3))
    return left_units, right_units_, t_left, t_right, f_right


@pytest.mark.parametrize("n_left,left_real,right_units,matched", [
    (1, 0, 0, 0), (1, 1, 1, 1), (2, 1, 2, 1), (2, 2, 2, 0), (13, 13, 13, 13),
    (31, 7, 29, 5), (101, 0, 50, 0), (997, 600, 400, 250),
])
def test_stage_equals_numpy(n_left: int, left_real: int, right_units: int, matched: int) -> None:
    left_units, right_u, t_left, t_right, f_right = _stage_case(
        n_left, left_real, right_units, matched, n_left + matched)
    bins = cuckoo_bins(max(right_units, 1))
    stage = JoinStage(("hub",), "r", ("hub", "r"), "", mode="oblivious", left_rows=n_left,
                      right_units=max(right_units, 1), bins=bins, fetchers=("p0", "p1"))
    table = oj.place(oj.bins_of(t_right, bins), bins)
    laid_tags = oj.random_tags(bins, oj._EMPTY)
    laid_tags[table >= 0] = t_right[table[table >= 0]]
    laid_f = oj._lay_out(f_right, table)
    left_bins = oj.bins_of(t_left, bins)
    if left_real:  # dummy tags colliding with each other must not matter
        t_left[left_real:] = t_left[-1]

    def prog(rt, lt, lb, rtag, rf):
        left = SharedTable(n_left, {
            "hub.tag0": rt.share(0, lt, n_left), "hub.bins0": rt.share(0, lb, (n_left, 3))})
        right = SharedTable(bins, {"hub.tag0": rt.share(2, rtag, bins),
                                   "r.F": rt.share(2, rf, (bins, 2, 3))})
        out = oj.oblivious_join_stage(rt, stage, left, right, "hub.tag0")
        assert set(out.cols) == {"r.F"}
        return rt.open(out.cols["r.F"]).view(np.int64)

    got = run_three(prog, [t_left, None, None], [left_bins, None, None],
                    [None, None, laid_tags], [None, None, laid_f])
    want = np.zeros((n_left, 2, 3), dtype=np.int64)
    where = {int(u): i for i, u in enumerate(right_u)}
    for i, u in enumerate(left_units):
        if int(u) in where:
            want[i] = f_right[where[int(u)]]
    for g in got:
        assert (g == want).all()


# -- leakage ----------------------------------------------------------------------------
def _transcripts(folder: Path) -> dict[str, list[tuple[str, str, int]]]:
    """Per receiving party: (sender, tag, payload length) of every message, in order."""
    return {path.stem: [(frm, tag, len(payload)) for frm, tag, payload in read_transcript(path)]
            for path in sorted(folder.glob("*.bin"))}


_QID = re.compile(r"[0-9a-f]{16,}")


def _normalise(records: list[tuple[str, str, int]]) -> dict[str, list[tuple[str, int]]]:
    """Per sender, in order, (tag, length): query ids differ between runs, and messages of
    different senders interleave as the threads run; the shape of the talk must not."""
    out: dict[str, list[tuple[str, int]]] = {}
    for sender, tag, n in records:
        out.setdefault(sender, []).append((_QID.sub("Q", tag), n))
    return out


LEAK_SQL = ("SELECT COUNT(*) AS n, SUM(l.amount) AS total FROM bank.loans l "
            "JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE p.open_claim = 1")


def _neighbours(tmp: Path, make, how: str = "swap") -> tuple[Path, Path]:
    """Two federations whose bank-insurer intersection differs by one person: in the
    second, a person with loans but no policy gets the policy of an insured person without
    loans (``swap``: same table sizes, intersection + 1) or a copy of it (``add``: the
    insurer has one more person too)."""
    first = make(DEMO, tmp / "a")
    second_dir = tmp / "b"
    shutil.copytree(tmp / "a", second_dir)
    csv = second_dir / "data" / "insurer" / "policies.csv"
    import duckdb

    con = duckdb.connect(str(second_dir / "data" / "bank.duckdb"), read_only=True)
    outsider = con.execute(
        f"SELECT MIN(customer_id) FROM loans WHERE customer_id NOT IN "
        f"(SELECT customer_id FROM read_csv_auto('{csv}'))").fetchone()[0]
    lonely = con.execute(
        f"SELECT MIN(customer_id) FROM read_csv_auto('{csv}') WHERE customer_id NOT IN "
        f"(SELECT customer_id FROM loans)").fetchone()[0]
    con.close()
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    ci = header.index("customer_id")
    out = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        if cells[ci] == str(lonely):
            if how == "add":
                out.append(line)
            cells[ci] = str(outsider)
        out.append(",".join(cells))
    csv.write_text("\n".join(out) + "\n")
    return first, second_dir / "federation.toml"


def _intersection(fed: Path) -> int:
    con = union_connection(load_federation(fed))
    n = con.execute("SELECT COUNT(DISTINCT l.customer_id) FROM bank.loans l "
                    "JOIN insurer.policies p ON l.customer_id = p.customer_id").fetchone()[0]
    con.close()
    return int(n)


def _run_recorded(fed: Path, folder: Path, monkeypatch: pytest.MonkeyPatch):
    """Run LEAK_SQL with transcripts in ``folder``; also record what each party opened."""
    opened: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    real_open_to = node_module.Runtime.open_to

    def open_to(self, x, party):
        got = real_open_to(self, x, party)
        if got is not None:
            opened[self.me].append(np.array(got))
        return got

    monkeypatch.setattr(node_module.Runtime, "open_to", open_to)
    monkeypatch.setenv("VEIL_TRANSCRIPT_DIR", str(folder))
    with deterministic_seeds("oblivious-leak"), veilql.connect(fed, "oracle") as session:
        rows = _quiet_sql(session, LEAK_SQL, epsilon=HUGE_EPSILON, delta=0).rows
    monkeypatch.delenv("VEIL_TRANSCRIPT_DIR")
    monkeypatch.setattr(node_module.Runtime, "open_to", real_open_to)
    return rows, _transcripts(folder), opened


@pytest.mark.parametrize("how", ["swap", "add"])
def test_neighbouring_federations_look_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                how: str) -> None:
    a, b = _neighbours(tmp_path, lambda s, d: oblivious_federation(s, d, BOUND), how)
    rows_a, talk_a, open_a = _run_recorded(a, tmp_path / "ta", monkeypatch)
    rows_b, talk_b, open_b = _run_recorded(b, tmp_path / "tb", monkeypatch)
    assert _intersection(b) == _intersection(a) + 1
    compute = ("bank", "payments", "insurer")
    for party in compute:
        assert _normalise(talk_a[party]) == _normalise(talk_b[party]), party
    # The only values a compute party opens are the bins of the hub's rows (at the two
    # fetchers): uniform in each third of the table, in both federations.
    bins = cuckoo_bins(BOUND)
    third = bins // 3
    for opened in (open_a, open_b):
        assert not opened[2]  # insurer, the right party, opens nothing
        for me in (0, 1):
            (b_,) = opened[me]
            b_ = b_.view(np.int64)
            assert b_.shape == (BOUND, 3)
            for k in range(3):
                counts = np.bincount((b_[:, k] - k * third) * 20 // third, minlength=20)
                assert stats.chisquare(counts).pvalue > 1e-4
    # and their distributions do not tell the federations apart
    for me in (0, 1):
        assert stats.ks_2samp(open_a[me][0].ravel(), open_b[me][0].ravel()).pvalue > 1e-4


def test_revealing_join_control_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same comparison over the revealing join tells the federations apart (the
    viewer's match message is one position longer), so the test above can fail."""
    a, b = _neighbours(tmp_path, oracle_federation)
    _, talk_a, _ = _run_recorded(a, tmp_path / "ta", monkeypatch)
    _, talk_b, _ = _run_recorded(b, tmp_path / "tb", monkeypatch)
    assert any(_normalise(talk_a[p]) != _normalise(talk_b[p]) for p in ("bank", "insurer"))


# -- plans, refusals, bounds, reuse -------------------------------------------------------
def test_golden_oblivious_plans(tmp_path: Path) -> None:
    import os

    fed = load_federation(oblivious_federation(DEMO, tmp_path / "fed", 1_000_000))
    cases = sorted(GOLDEN.glob("*.sql"))
    assert cases
    for case in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = compile_plan(case.read_text(), fed).to_s() + "\n"
        expected = case.with_suffix(".plan")
        if os.environ.get("VEIL_UPDATE_GOLDEN") or not expected.exists():
            expected.write_text(text)
        # The lines of the sharing and the join stages must match exactly; the rest (local
        # SQL, noise) is golden-tested for the revealing join by test_plans.py.
        assert _join_lines(text) == _join_lines(expected.read_text())
        assert "reveals nothing but the declared bounds" in text


def _join_lines(plan_text: str) -> list[str]:
    return [line for line in plan_text.splitlines()
            if "secret-shares" in line or "join" in line.split(":")[0]]


def _strip_max_units(fed: Path, policy: str) -> None:
    path = fed.parent / "policies" / f"{policy}.toml"
    path.write_text(re.sub(r"^max_units = .*\n", "", path.read_text(), flags=re.M))


def test_missing_bound_is_refused_before_any_charge(tmp_path: Path) -> None:
    fed = oblivious_federation(DEMO, tmp_path / "fed", BOUND)
    _strip_max_units(fed, "insurer")
    ledgers = tmp_path / "ledgers"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VEIL_LEDGER_DIR", str(ledgers))
        with veilql.connect(fed, "oracle") as session, pytest.raises(PolicyError) as err:
            _quiet_sql(session, LEAK_SQL, epsilon=1.0, delta=0)
    assert "insurer.policies declares no max_units" in err.value.message
    assert "max_units = N" in (err.value.hint or "")
    assert not any(p.stat().st_size for p in ledgers.glob("*.jsonl"))
    # a query that joins nothing is not affected
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VEIL_LEDGER_DIR", str(ledgers))
        with veilql.connect(fed, "oracle") as session:
            _quiet_sql(session, "SELECT COUNT(*) AS n FROM insurer.policies", epsilon=1.0,
                       delta=0)


def test_private_group_keys_are_refused(oblivious) -> None:
    session, _ = oblivious
    with pytest.raises(UnsupportedError, match="cannot group by keys without a public"):
        _quiet_sql(session, "SELECT c.branch, COUNT(*) AS n FROM bank.customers c JOIN "
                   "insurer.policies p ON c.customer_id = p.customer_id GROUP BY c.branch",
                   epsilon=1.0, delta=1e-6)


def test_party_over_its_bound_fails_generically_and_keeps_the_charge(tmp_path: Path) -> None:
    fed = oblivious_federation(DEMO, tmp_path / "fed", BOUND)
    path = fed.parent / "policies" / "insurer.toml"
    path.write_text(path.read_text().replace(f"max_units = {BOUND}", "max_units = 100"))
    ledgers = tmp_path / "ledgers"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VEIL_LEDGER_DIR", str(ledgers))
        with veilql.connect(fed, "oracle") as session, pytest.raises(QueryFailed) as err:
            _quiet_sql(session, LEAK_SQL, epsilon=1.0, delta=0)
    assert "max_units" not in str(err.value) and "100" not in err.value.message
    entries = [json.loads(line) for line in (ledgers / "insurer.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in entries][-2:] == ["reserve", "commit"]  # the charge stands
    assert "declared max_units" in (ledgers / "insurer.log").read_text()


def test_federation_default_and_loader(tmp_path: Path) -> None:
    fed = oracle_federation(DEMO, tmp_path / "fed")
    for policy in (fed.parent / "policies").glob("*.toml"):
        text = re.sub(r'^join_reveal = "none"\n', "", policy.read_text(), flags=re.M)
        policy.write_text(text.replace('privacy_unit = "customer_id"\n',
                                       'privacy_unit = "customer_id"\nmax_units = 30000\n'))
    text = fed.read_text().replace('policies = "policies"\n',
                                   'policies = "policies"\njoin_reveal = "nothing"\n')
    fed.write_text(text)
    loaded = load_federation(fed)
    assert loaded.join_reveal == "nothing"
    table = loaded.party("bank").tables["loans"]
    assert (table.join_reveal, table.max_units) == ("nothing", 30000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = compile_plan(LEAK_SQL, loaded, epsilon=1.0, delta=0)
    assert [j.mode for j in plan.joins] == ["oblivious"]
    assert plan.joins[0].left_rows == 30000
    for bad, needle in (("max_units = 0", "max_units"), ('max_units = "many"', "max_units"),
                        (f"max_units = {2**34}", "max_units")):
        path = fed.parent / "policies" / "bank.toml"
        keep = path.read_text()
        path.write_text(keep.replace("max_units = 30000", bad, 1))
        with pytest.raises(VeilError, match=needle):
            load_federation(fed)
        path.write_text(keep)
    fed.write_text(text.replace('join_reveal = "nothing"', 'join_reveal = "nothin"'))
    with pytest.raises(VeilError, match="federation.join_reveal"):
        load_federation(fed)


def test_repeated_oblivious_query_reuses_the_join(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = secure_mode.oblivious_join_stage

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(secure_mode, "oblivious_join_stage", counting)  # the join loop's own name
    fed = oblivious_federation(DEMO, tmp_path / "fed", BOUND)
    with veilql.connect(fed, "oracle") as session:
        first = _quiet_sql(session, LEAK_SQL, epsilon=HUGE_EPSILON, delta=0).rows
        assert len(calls) == 3  # one stage at each compute party
        again = _quiet_sql(session, LEAK_SQL, epsilon=HUGE_EPSILON, delta=0).rows
        assert again == first and len(calls) == 3
        _quiet_sql(session, LEAK_SQL, epsilon=0.5, delta=0)
        assert len(calls) == 3


def test_shares_of_a_stage_are_fresh() -> None:
    """The moved columns are a fresh sharing: the right party's components of them are
    not its input components (it is the outsider of the gather)."""
    stage = JoinStage(("hub",), "r", ("hub", "r"), "", mode="oblivious", left_rows=4,
                      right_units=4, bins=cuckoo_bins(4), fetchers=("p0", "p1"))
    t = oj.real_tags(np.arange(4, dtype=np.uint64) * 7919)
    table = oj.place(oj.bins_of(t, stage.bins), stage.bins)
    tags_ = oj.random_tags(stage.bins, oj._EMPTY)
    tags_[table >= 0] = t[table[table >= 0]]
    f = oj._lay_out(np.arange(1, 5)[:, None], table)

    def prog(rt):
        left = SharedTable(4, {"h.tag0": rt.share(0, t if rt.me == 0 else None, 4),
                               "h.bins0": rt.share(0, oj.bins_of(t, stage.bins)
                                                   if rt.me == 0 else None, (4, 3))})
        right = SharedTable(stage.bins, {"h.tag0": rt.share(2, tags_ if rt.me == 2 else None,
                                                            stage.bins),
                                         "r.F": rt.share(2, f if rt.me == 2 else None,
                                                         (stage.bins, 1))})
        out = oj.oblivious_join_stage(rt, stage, left, right, "h.tag0")
        return rt.open(out.cols["r.F"]).view(np.int64).ravel().tolist(), out.cols["r.F"]

    res = run_three(prog)
    assert res[0][0] == [1, 2, 3, 4]
    assert isinstance(res[2][1], AShare)
