"""GROUP BY a group column that declares NULL as one of its values (``nullable = true``,
issue #14).

SQL's GROUP BY makes one group of the rows whose key is NULL. A group column with declared
values and ``nullable = true`` has the public domain ``values + [NULL]``: its NULL cell is
released like any other (a noisy count, about 0 when no row is NULL), labelled NULL. Oracle
at a huge epsilon against DuckDB on the union of the parties' tables (counts exact, sums to
fixed point): one party (local mode), across parties with the key at either party, two
keys, a hidden key, a UNION ALL grouped by its column and a merged key ``a.g + b.h``.
Without the flag the NULL rows are in no cell (unchanged). Policy validation refuses
``nullable`` on a value column and a non-boolean. Attack: the message lengths every compute
party receives are the same whether one person's group value is NULL or a value.
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import pytest
from lengths import received, run_recorded
from oracle import (
    HUGE_EPSILON,
    local_federation,
    oracle_pair,
    plain,
    run_huge,
    same,
    write_unit_table,
)

import veilql
from veilql.errors import ConfigError
from veilql.policies.loader import load_federation
from veilql.ui.formats import render

PEOPLE = 40
PARTIES = ("alice", "bob", "carol")
FEDERATION = local_federation("null_groups", PARTIES)
# g, h: nullable with values; s: the same values, not nullable (its NULL rows are no cell);
# k: nullable integers, never NULL in the data (its NULL cell is a noisy 0)
POLICIES = {
    "alice": """
g = { role = "group", values = ["x", "y"], nullable = true }
s = { role = "group", values = ["x", "y"] }
k = { role = "group", values = [1, 2], nullable = true }
v = { role = "value", bounds = [0, 50] }
""",
    "bob": """
h = { role = "group", values = [1, 2, 3], nullable = true }
f = { role = "value", bounds = [0, 20] }
""",
    "carol": """
g = { role = "group", values = ["x", "z"], nullable = true }
v = { role = "value", bounds = [0, 50] }
""",
}
TYPES = {"alice": "g VARCHAR, s VARCHAR, k INTEGER, v INTEGER",
         "bob": "h INTEGER, f INTEGER", "carol": "g VARCHAR, v INTEGER"}
#: The person whose group values the neighbouring federation sets to NULL.
MOVED = 3


def _row(party: str, u: int, null: bool) -> tuple:
    rnd = random.Random(f"{party}-{u}")

    def maybe(value: object) -> object:
        if null:
            return None
        return None if rnd.random() < 0.2 and u != MOVED else value  # MOVED: a value

    if party == "alice":
        g = maybe(rnd.choice("xy"))
        return (g, g, rnd.randint(1, 2), rnd.randint(0, 50))
    if party == "bob":
        return (maybe(rnd.randint(1, 3)), rnd.randint(0, 20))
    return (maybe(rnd.choice("xz")), rnd.randint(0, 50))


def build(root: Path, moved_null: bool = False) -> Path:
    """Three parties' tables under ``root``, about a fifth of the group values NULL; with
    ``moved_null``, person ``MOVED``'s group values are NULL."""
    (root / "data").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "federation.toml").write_text(FEDERATION)
    for party in PARTIES:
        (root / "policies" / f"{party}.toml").write_text(
            '[tables.t]\nprivacy_unit = "unit"\n\n'
            f'[tables.t.columns]\nunit = {{ role = "key" }}{POLICIES[party]}')
        rows = [(u, *_row(party, u, moved_null and u == MOVED)) for u in range(1, PEOPLE + 1)
                if u % 7 != (PARTIES.index(party) + 1)]  # not everyone everywhere
        write_unit_table(root / "data" / f"{party}.duckdb", TYPES[party], rows)
    return root / "federation.toml"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    yield from oracle_pair(build(tmp_path_factory.mktemp("null_groups")))


_run = partial(run_huge, delta=0.0, quiet=Warning)  # pure: fast calibration


def _check(result: veilql.Result, want: list[tuple], keys: int, sql: str) -> None:
    """The secure answer is DuckDB's, row for row by key (NULL keys included): counts and
    sums exact; a public cell DuckDB has no row for is released with count about 0."""
    got = {tuple(r[:keys]): r for r in result.rows}
    for w in want:
        assert tuple(w[:keys]) in got, (sql, result.rows, want)
        for a, b in zip(got[tuple(w[:keys])][keys:], w[keys:], strict=True):
            assert same(a, b, 0.01), (sql, result.rows, want)
    wanted = {tuple(w[:keys]) for w in want}
    for k, row in got.items():
        if k not in wanted:
            assert all(abs(v or 0) < 0.5 for v in row[keys:]), (sql, result.rows, want)


J2 = "FROM alice.t a JOIN bob.t b ON a.unit = b.unit"
J3 = f"{J2} JOIN carol.t c ON b.unit = c.unit"

LOCAL = ("SELECT g, COUNT(*) AS n, SUM(v) AS s, AVG(v) AS m, MIN(v) AS lo, MAX(v) AS hi "
         "FROM alice.t GROUP BY g ORDER BY g")
ACROSS = [
    # the key at the first party, then at the second
    (f"SELECT a.g, COUNT(*) AS n, SUM(b.f) AS t {J2} GROUP BY a.g", 1),
    (f"SELECT b.h, COUNT(*) AS n, SUM(a.v) AS t {J2} GROUP BY b.h", 1),
    # two keys, one at each party (the NULL x NULL cell too)
    (f"SELECT a.g, b.h, COUNT(*) AS n, SUM(a.v) AS t {J2} GROUP BY a.g, b.h", 2),
]


def test_the_data_has_null_groups(fed) -> None:
    _, con = fed
    for party, col in (("alice", "g"), ("bob", "h"), ("carol", "g")):
        total, nulls = plain(con, f"SELECT COUNT(*), COUNT(*) - COUNT({col}) FROM {party}.t")[0]
        assert 0 < nulls < total


def test_one_party_releases_the_null_cell(fed) -> None:
    session, con = fed
    result = _run(session, LOCAL)
    assert [r[0] for r in result.rows] == ["x", "y", None]
    _check(result, plain(con, LOCAL), 1, LOCAL)


@pytest.mark.parametrize("sql,keys", ACROSS[:1] + [pytest.param(
    *q, marks=pytest.mark.slow) for q in ACROSS[1:]])
def test_across_parties(fed, sql: str, keys: int) -> None:
    session, con = fed
    result = _run(session, sql)
    assert any(None in r[:keys] for r in result.rows)
    _check(result, plain(con, sql), keys, sql)


def test_the_keys_own_aggregates_are_null_in_its_null_cell(fed) -> None:
    # SUM(h), MAX(h), AVG(h) of the key itself are its label after release: NULL there
    session, con = fed
    sql = "SELECT h, SUM(h) AS s, MAX(h) AS m, AVG(h) AS a, COUNT(*) AS n FROM bob.t GROUP BY h"
    result = _run(session, sql)
    assert result.rows[-1][:4] == [None, None, None, None]
    _check(result, plain(con, sql), 1, sql)


def test_a_hidden_nullable_key_keeps_its_null_cell(fed) -> None:
    # grouped by a.g but not selecting it: DuckDB's rows include the NULL group's
    session, con = fed
    sql = f"SELECT COUNT(*) AS n, SUM(b.f) AS t {J2} GROUP BY a.g ORDER BY n"
    got = sorted(tuple(round(v) for v in r) for r in _run(session, sql).rows)
    assert got == sorted(tuple(round(v) for v in r) for r in plain(con, sql))


@pytest.mark.slow
def test_two_keys_across_three_parties(fed) -> None:
    session, con = fed
    sql = f"SELECT a.g, c.g AS cg, COUNT(*) AS n, SUM(c.v) AS t {J3} GROUP BY a.g, c.g"
    _check(_run(session, sql), plain(con, sql), 2, sql)


UNION = ("SELECT g, COUNT(*) AS n, SUM(v) AS s FROM (SELECT g, v FROM alice.t UNION ALL "
         "SELECT g, v FROM carol.t) AS u GROUP BY g")


def test_union_all_grouped_by_its_nullable_column(fed) -> None:
    session, con = fed
    result = _run(session, UNION)
    assert sorted(r[0] for r in result.rows if r[0] is not None) == ["x", "y", "z"]
    assert any(r[0] is None for r in result.rows)
    _check(result, plain(con, UNION), 1, UNION)


def test_a_merged_key_with_a_nullable_part(fed) -> None:
    # a.k + b.h: NULL when b.h is; a part's NULL is in the merged domain, nullable or not
    session, con = fed
    sql = f"SELECT a.k + b.h AS kh, COUNT(*) AS n, SUM(a.v) AS t {J2} GROUP BY a.k + b.h"
    result = _run(session, sql)
    assert any(r[0] is None for r in result.rows)
    _check(result, plain(con, sql), 1, sql)


def test_the_null_cell_is_a_noisy_zero_without_null_rows(fed) -> None:
    session, con = fed
    assert plain(con, "SELECT COUNT(*) FROM alice.t WHERE k IS NULL") == [(0,)]
    for sql in ("SELECT k, COUNT(*) AS n FROM alice.t GROUP BY k",
                f"SELECT a.k, COUNT(*) AS n {J2} GROUP BY a.k"):
        result = _run(session, sql)
        assert [r[0] for r in result.rows] == [1, 2, None]
        assert abs(result.rows[-1][1]) < 0.5
        _check(result, plain(con, sql), 1, sql)


def test_without_the_flag_null_rows_are_in_no_cell(fed) -> None:
    # s holds the same values as g but is not nullable: no NULL cell (the documented rule)
    session, con = fed
    result = _run(session, "SELECT s, COUNT(*) AS n FROM alice.t GROUP BY s")
    assert [r[0] for r in result.rows] == ["x", "y"]
    want = plain(con, "SELECT s, COUNT(*) FROM alice.t WHERE s IS NOT NULL GROUP BY s")
    _check(result, want, 1, "s")


def test_having_order_by_and_count_distinct(fed) -> None:
    session, con = fed
    sql = ("SELECT g, COUNT(*) AS n FROM alice.t GROUP BY g HAVING COUNT(*) > 0 "
           "ORDER BY g DESC NULLS FIRST")
    result = _run(session, sql)
    want = plain(con, sql)
    assert [r[0] for r in result.rows] == [w[0] for w in want] and want[0][0] is None
    _check(result, want, 1, sql)
    # HAVING on the key's NULL (post-processing of released rows, as SQL's)
    for cond in ("g IS NULL", "g IS NOT NULL AND COUNT(*) > 3"):
        sql = f"SELECT g, COUNT(*) AS n FROM alice.t GROUP BY g HAVING {cond}"
        result, want = _run(session, sql), plain(con, sql)
        assert sorted(map(str, [r[0] for r in result.rows])) == sorted(map(str, [w[0] for w in
                                                                               want]))
        _check(result, want, 1, sql)
    # COUNT(DISTINCT g) does not count NULL, as in SQL
    sql = "SELECT COUNT(DISTINCT g) AS d FROM alice.t"
    assert round(_run(session, sql).rows[0][0]) == plain(con, sql)[0][0] == 2


def test_formats_and_catalog_label_null(fed) -> None:
    session, _ = fed
    from veilql.ui.catalog import schema_rows

    policy = session.federation.party("alice").tables["t"]
    rows = {r[0]: r for r in schema_rows(policy)}
    assert rows["g"][-1] == ["x", "y", None] and rows["s"][-1] == ["x", "y"]
    text = session.explain("SELECT g, COUNT(*) AS n FROM alice.t GROUP BY g")
    assert "['x', 'y', None]" in str(text)
    # the released NULL cell: JSON null, the table's (and shell's) NULL, CSV's empty field
    result = _run(session, "SELECT g, COUNT(*) AS n FROM alice.t GROUP BY g")
    rows = [[r[0], round(r[1])] for r in result.rows]
    assert json.loads(render(result.columns, rows, "json"))["rows"][-1][0] is None
    assert render(result.columns, rows, "table").splitlines()[-1].split()[0] == "NULL"
    assert render(result.columns, rows, "csv").splitlines()[-1].startswith(",")


@pytest.fixture(scope="module")
def policy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("null_policies")
    build(root)
    return root


@pytest.mark.parametrize("columns,message", [
    ('v = { role = "value", bounds = [0, 50], nullable = true }', "only allowed on group"),
    ('g = { role = "group", values = ["x"], nullable = "yes" }', "must be true or false"),
    ('g = { role = "group", values = ["x"], nullable = 1 }', "must be true or false"),
    ('g = { role = "group", nullable = true }', "nullable needs values"),
])
def test_policy_validation(policy_root: Path, columns: str, message: str) -> None:
    policy = policy_root / "policies" / "alice.toml"
    for unit in ('{ role = "key" }', '{ role = "key", nullable = true }'):
        body = columns if "nullable" not in unit else ""
        policy.write_text('[tables.t]\nprivacy_unit = "unit"\n\n[tables.t.columns]\n'
                          f"unit = {unit}\n{body}\n")
        with pytest.raises(ConfigError) as info:
            load_federation(policy_root / "federation.toml")
        text = str(info.value)
        assert "columns.unit.nullable" in text if not body else (
            message in text and "nullable" in text), text


def test_a_persons_null_group_changes_no_message_length(tmp_path: Path) -> None:
    # Attack: the analyst colluding with a compute party watches message sizes to learn
    # whether one person's group value is NULL. The NULL cell is a public cell like the
    # others, so the lengths every compute party receives must not change.
    sql = (f"SELECT a.g, b.h, COUNT(*) AS n, SUM(b.f) AS t {J2} GROUP BY a.g, b.h")
    seen = []
    for moved_null in (False, True):
        root = tmp_path / str(moved_null)
        fed = build(root, moved_null)
        run_recorded(fed, root / "out", sql, epsilon=HUGE_EPSILON, delta=0.0)
        seen.append(received(root / "out", PARTIES))
    assert seen[0] == seen[1]
    assert sum(seen[0].values()) > 0
