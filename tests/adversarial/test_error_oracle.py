"""Attack: make a party's engine fail on a row's value and read the failure as an answer.

Route: the analyst writes a query that the binder accepts but that a party's engine can
only run on some data: text compared with a number (the engine converts every row and
quotes the first that fails: ``Could not convert string 'west-01' to INT32``), integer or
decimal arithmetic that overflows for large enough rows, division by a column that is 0
on some row. Whether the query fails, and the engine's text, are then a free oracle on the
rows. What must hold: such queries are refused at bind time (exit 1, nothing charged,
nothing of the data in the message), and whatever does fail inside a party's engine
reaches the caller as a generic ``LocalEngineError`` whose engine text is only in
``.detail``.
"""

from __future__ import annotations

import itertools
import pickle
import random
import shutil
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner, Result
from sql_fixtures import federation

from veilql.cli import main
from veilql.connectors import open_connector
from veilql.engine.sql.bind import bind
from veilql.engine.sql.parse import parse
from veilql.errors import ExitCode, QueryError, VeilError
from veilql.policies.model import ColumnPolicy, Federation, Party, TablePolicy

DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "demo"


@pytest.fixture()
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo federation with its ledgers in a temporary folder."""
    root = tmp_path / "fed"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("ledgers"))
    (tmp_path / "ledgers").mkdir()
    monkeypatch.setenv("VEIL_LEDGER_DIR", str(tmp_path / "ledgers"))
    monkeypatch.setenv("VEIL_ANALYST", "alice")
    return root / "federation.toml"


def _ledgers(fed: Path) -> dict[str, bytes]:
    folder = fed.parent.parent / "ledgers"
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused_at_bind(fed: Path, sql: str, *secrets: str) -> Result:
    """``veil query`` refuses ``sql`` before touching data: exit 1, no data in the text."""
    before = _ledgers(fed)
    res = CliRunner().invoke(main, ["query", "-f", str(fed), "--epsilon", "1", sql],
                             catch_exceptions=True)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == ExitCode.REFUSED, res.stderr
    assert res.stdout == "" and res.stderr.startswith("veil: error: ")
    assert "Traceback" not in res.stderr
    for secret in secrets:
        assert secret not in res.stderr
    assert _ledgers(fed) == before
    return res


def test_string_column_compared_with_number_is_refused_at_bind(fed: Path) -> None:
    # Route: branch (VARCHAR) = 5 made DuckDB cast every branch to INT32 and quote the
    # first one that failed, e.g. 'west-01'.
    res = refused_at_bind(fed, "SELECT COUNT(*) FROM bank.customers WHERE branch = 5",
                          "west", "INT32", "Conversion")
    assert "customers.branch (type VARCHAR)" in res.stderr
    assert "= '5'" in res.stderr  # the fix


def test_group_column_typed_by_its_public_values_is_refused_without_a_catalog() -> None:
    # The binder needs no connector to see that region holds text: its public values do.
    with pytest.raises(QueryError, match="text, by its public values"):
        bind(parse("SELECT COUNT(*) FROM bank.customers WHERE region IN (1, 2)"),
             federation())


def test_number_column_compared_with_non_numeric_string_is_refused(fed: Path) -> None:
    res = refused_at_bind(fed, "SELECT COUNT(*) FROM bank.loans WHERE term_months = 'abc'",
                          "Could not convert", "INT32")
    assert "loans.term_months (type INTEGER)" in res.stderr


def test_text_columns_of_different_types_cannot_be_compared(fed: Path) -> None:
    # Route: region = term_months converts every region of the joined rows to a number.
    refused_at_bind(fed, "SELECT COUNT(*) FROM bank.customers c JOIN bank.loans l "
                    "ON c.customer_id = l.customer_id WHERE c.region = l.term_months",
                    "Conversion", "north")


def test_arithmetic_on_strings_is_refused_at_bind(fed: Path) -> None:
    refused_at_bind(fed, "SELECT COUNT(*) FROM bank.loans WHERE amount + 'x' > 1", "Binder")


def test_division_by_a_column_is_refused_at_bind(fed: Path) -> None:
    # Route: PostgreSQL raises "division by zero" exactly when some row's divisor is 0.
    res = refused_at_bind(fed, "SELECT COUNT(*) FROM bank.loans WHERE amount / defaulted > 1")
    assert "divisor is 0" in res.stderr


def test_integer_overflow_oracle_is_refused_at_bind(fed: Path) -> None:
    # Route: age (INTEGER) * 10^8 overflows INT32 once an age reaches 22, and DuckDB's
    # message quotes the age: a binary search on the factor finds the largest age.
    res = refused_at_bind(fed, "SELECT COUNT(*) FROM bank.customers WHERE age * 100000000 > 1",
                          "Overflow", "INT32 (")
    assert "integer type" in res.stderr and "3e0" in res.stderr
    # The fix the hint names is accepted: in floating point nothing can overflow.
    fixed = CliRunner().invoke(main, ["query", "-f", str(fed), "--epsilon", "1",
                                      "SELECT COUNT(*) AS n FROM bank.customers "
                                      "WHERE age * 1e8 > 1"], catch_exceptions=False)
    assert fixed.exit_code == 0, fixed.stderr


# ---------------------------------------------------------------- the binder is conservative

_RANGES = {"TINYINT": (-128, 127), "SMALLINT": (-(2**15), 2**15 - 1),
           "INTEGER": (-(2**31), 2**31 - 1), "BIGINT": (-(2**53), 2**53),
           "UTINYINT": (0, 255), "UINTEGER": (0, 2**32 - 1)}
_TYPES = [*_RANGES, "DECIMAL(4,1)", "DECIMAL(12,2)", "DECIMAL(18,0)", "DECIMAL(20,3)",
          "DECIMAL(38,2)", "DOUBLE", "FLOAT"]
_LITERALS = ["1", "3", "100", "127", "30000", "1000000", "3000000000", "0.5", "1.25", "1e3",
             "100000000000000000000"]


def _bounds(rng: random.Random, t: str) -> tuple[int, int]:
    lo, hi = _RANGES.get(t, (-(2**53), 2**53))
    if t.startswith("DECIMAL"):
        width, scale = map(int, t[8:-1].split(","))
        hi = min(10 ** (width - scale) - 1, 2**53)
        lo = -hi
    picks = [c for c in (0, 1, 10, 127, 1000, 30000, 10**6, 2**31 - 1, 10**12) if c <= hi]
    a, b = rng.choice(picks), rng.choice(picks)
    if lo < 0 and rng.random() < 0.5:
        a = -a
    return min(a, b), max(a, b)


def _expr(rng: random.Random, depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(["a", "b", "c", rng.choice(_LITERALS)])
    if rng.random() < 0.15:
        return f"-({_expr(rng, depth - 1)})"
    op = rng.choice([" + ", " - ", " * "])
    return f"({_expr(rng, depth - 1)}{op}{_expr(rng, depth - 1)})"


def test_accepted_arithmetic_never_overflows_in_duckdb_at_the_declared_bounds() -> None:
    # Route: any integer or decimal expression whose engine type overflows for some rows
    # within the declared bounds. Property: whatever the binder accepts, DuckDB computes
    # without error at every corner of the declared bounds (where such expressions peak).
    rng = random.Random(20240611)
    con = duckdb.connect()
    accepted = 0
    for _ in range(400):
        types = [rng.choice(_TYPES) for _ in range(3)]
        bounds = [_bounds(rng, t) for t in types]
        cols = {n: ColumnPolicy(n, "value", bounds=bd, type=t)
                for n, t, bd in zip("abc", types, bounds, strict=True)}
        cols["k"] = ColumnPolicy("k", "key", type="BIGINT")
        table = TablePolicy("t", "k", 1, columns=cols)
        fed = Federation("f", Path("/x/f.toml"), (Party("p", "local", "duckdb:x", {"t": table}),))
        e = _expr(rng, rng.randint(1, 3))
        try:
            bind(parse(f"SELECT COUNT(*) FROM p.t WHERE {e} > 0"), fed)
        except QueryError:
            continue
        accepted += 1
        used = [n for n in "abc" if n in e]
        for corner in itertools.product(*[bounds["abc".index(n)] for n in used]):
            values = ", ".join(f"CAST({v} AS {types['abc'.index(n)]}) AS {n}"
                               for n, v in zip(used, corner, strict=True)) or "1 AS x"
            con.sql(f"SELECT {e} FROM (SELECT {values})").fetchall()  # must not raise
    assert accepted > 100


# ---------------------------------------------------------------- connectors


@pytest.fixture
def duck_file(tmp_path: Path) -> Path:
    path = tmp_path / "bank.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE loans (customer_id BIGINT, region VARCHAR, amount DECIMAL(12,2))")
    con.execute("INSERT INTO loans VALUES (1, 'west-01', 463.00)")
    con.close()
    return path


def test_engine_error_detail_is_not_in_message(duck_file: Path) -> None:
    # Route: whatever still fails inside a party's engine must not carry the engine's text,
    # which quotes the row, to anyone but the party's own log.
    from veilql.errors import LocalEngineError

    with open_connector(f"duckdb:{duck_file}", Path("/")) as conn:
        with pytest.raises(LocalEngineError) as info:
            conn.run("SELECT CAST(region AS INTEGER) AS r FROM loans")
    err = info.value
    shown = f"{err} {err.hint} {err.args} {err!r}"
    assert "west-01" not in shown and "INT32" not in shown and "Conversion" not in shown
    assert err.exit_code == ExitCode.UNAVAILABLE
    assert "west-01" in err.detail and err.stage == "query"
    assert err.__cause__ is None and err.__suppress_context__  # no chained engine text
    copy = pickle.loads(pickle.dumps(err))  # what could cross a process boundary
    assert isinstance(copy, LocalEngineError) and "west-01" not in copy.detail


def test_cast_failure_text_never_reaches_analyst(fed: Path, duck_file: Path) -> None:
    # Route: SUM(amount * 10^17) failed in the fixed-point cast, quoting the row's scaled
    # amount ("Failed to cast decimal value 46300000000000000000 to INT64"). At the CLI it
    # is refused before any engine runs; and should a cast still fail inside an engine,
    # the connector's error carries none of the engine's text.
    from veilql.errors import LocalEngineError

    refused_at_bind(fed, "SELECT SUM(amount * 100000000000000000) FROM bank.loans",
                    "Failed to cast", "463")
    with open_connector(f"duckdb:{duck_file}", Path("/")) as conn:
        with pytest.raises(LocalEngineError) as info:
            conn.run_numpy("SELECT CAST(amount * 100000000000000000 AS BIGINT) AS v FROM loans")
    assert "463" not in f"{info.value} {info.value.hint}" and "463" in info.value.detail


def test_catalog_failure_text_is_detail_only(duck_file: Path) -> None:
    from veilql.errors import LocalEngineError

    conn = open_connector(f"duckdb:{duck_file}", Path("/"))
    conn.close()
    with pytest.raises(LocalEngineError) as info:
        conn.catalog()
    assert info.value.stage == "catalog" and "closed" in info.value.detail.lower()
    assert "closed" not in str(info.value).lower()


def test_folder_connector_run_failure_is_generic(tmp_path: Path) -> None:
    from veilql.errors import LocalEngineError

    (tmp_path / "t.csv").write_text("customer_id,city\n1,zz-only-one\n")
    with open_connector(f"csv:{tmp_path}", Path("/")) as conn:
        with pytest.raises(LocalEngineError) as info:
            conn.run("SELECT CAST(city AS INTEGER) AS c FROM t")
    assert "zz-only-one" not in f"{info.value} {info.value.hint}"
    assert "zz-only-one" in info.value.detail


def test_unknown_type_is_left_to_the_owner() -> None:
    # A remote party's column has no type at the client; the owner's node (which knows it)
    # refuses. Here: the same policy with and without the catalog's type.
    base = federation()
    bank = base.party("bank")
    assert bank is not None
    customers = bank.tables["customers"]
    typed = replace(customers, columns={**customers.columns, "branch": replace(
        customers.columns["branch"], type="VARCHAR")})
    owner = replace(base, parties=(replace(bank, tables={**bank.tables, "customers": typed}),)
                    + base.parties[1:])
    sql = "SELECT COUNT(*) FROM bank.customers WHERE branch = 5"
    bind(parse(sql), base)  # the client cannot tell
    with pytest.raises(VeilError, match="type VARCHAR"):
        bind(parse(sql), owner)
