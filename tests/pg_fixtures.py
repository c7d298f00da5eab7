"""PostgreSQL for tests: find the local server, and load a party's tables into a fresh schema.

The server is ``$VEIL_TEST_POSTGRES`` (a libpq URL) when set, else the first of
``DEFAULT_URLS`` that answers. Every schema made here has a unique name and is dropped on
exit, so parallel test runs and other users of the database never see each other's tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from veilql.connectors.base import open_connector
from veilql.policies.loader import load_federation

ENV = "VEIL_TEST_POSTGRES"
DEFAULT_URLS = (
    "postgresql://127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/postgres",
)
#: Digits of the NUMERIC that float money columns are stored as (scale from the policy).
MONEY_PRECISION = 12


def server_url() -> tuple[str | None, str]:
    """(a URL of a reachable server, "") or (None, why not), for ``pytest.skip``."""
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed (pip install 'psycopg[binary]')"
    candidates = [os.environ[ENV]] if os.environ.get(ENV) else list(DEFAULT_URLS)
    errors = []
    for url in candidates:
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url, ""
        except psycopg.Error as exc:
            errors.append(f"{url}: {str(exc).strip().splitlines()[0] if str(exc) else exc}")
    return None, "no PostgreSQL server reachable (set $VEIL_TEST_POSTGRES): " + "; ".join(errors)


@contextmanager
def fresh_schema(url: str) -> Iterator[tuple[Any, str]]:
    """A read-write autocommit connection and a new empty schema, dropped on exit."""
    import psycopg
    from psycopg import sql

    name = f"veil_test_{os.getpid()}_{secrets.token_hex(4)}"
    con = psycopg.connect(url, autocommit=True)
    try:
        con.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        try:
            yield con, name
        finally:
            con.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    finally:
        con.close()


def pg_type(arrow: pa.DataType, decimals: int | None = None) -> str:
    """The PostgreSQL column type for an Arrow column; a float column with a policy's
    ``decimals`` (money) becomes an exact NUMERIC, as a real warehouse would store it.

    >>> pg_type(pa.float64(), 2), pg_type(pa.decimal128(12, 2)), pg_type(pa.int64())
    ('numeric(12,2)', 'numeric(12,2)', 'bigint')
    """
    if pa.types.is_floating(arrow):
        return f"numeric({MONEY_PRECISION},{decimals})" if decimals else "double precision"
    if pa.types.is_decimal(arrow):
        return f"numeric({arrow.precision},{arrow.scale})"
    simple = {
        pa.int16(): "smallint",
        pa.int32(): "integer",
        pa.int64(): "bigint",
        pa.bool_(): "boolean",
        pa.date32(): "date",
        pa.string(): "text",
        pa.large_string(): "text",
    }
    if arrow in simple:
        return simple[arrow]
    raise TypeError(f"no PostgreSQL type for Arrow {arrow} in the test loader")


def load_table(con: Any, schema: str, table: str, data: pa.Table,
               decimals: dict[str, int] | None = None) -> None:
    """Create ``schema.table`` with ``pg_type`` columns and COPY ``data`` into it."""
    from psycopg import sql

    decimals = decimals or {}
    types = {f.name: pg_type(f.type, decimals.get(f.name)) for f in data.schema}
    target = sql.Identifier(schema, table)
    con.execute(sql.SQL("CREATE TABLE {} ({})").format(
        target,
        sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                           for n, t in types.items()),
    ))
    numeric_scale = {n: int(t.split(",")[1].rstrip(")")) for n, t in types.items()
                     if t.startswith("numeric")}
    columns = data.to_pydict()
    names = list(columns)
    with con.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
        target, sql.SQL(", ").join(sql.Identifier(n) for n in names),
    )) as copy:
        for row in zip(*(columns[n] for n in names), strict=True):
            copy.write_row([_exact(v, numeric_scale.get(n)) for n, v in zip(names, row,
                                                                              strict=True)])
    con.execute(sql.SQL("ANALYZE {}").format(target))


def _exact(value: Any, scale: int | None) -> Any:
    """A float bound for a NUMERIC column as the decimal it was written as (e.g. 784.99)."""
    if scale is None or value is None or isinstance(value, Decimal):
        return value
    return Decimal(f"{value:.{scale}f}")


def load_party(con: Any, schema: str, federation: Path, party: str) -> list[str]:
    """Copy every table of ``party`` in the federation file into ``schema``; their names.

    Float columns with ``decimals`` in the party's policy become NUMERIC of that scale.
    """
    fed = load_federation(federation)
    p = fed.party(party)
    assert p is not None, f"no party {party} in {federation}"
    with open_connector(p.connector, fed.root) as source:
        tables = list(source.catalog())
        for table in tables:
            policy = p.tables.get(table)
            decimals = {c.name: c.decimals for c in policy.columns.values()} if policy else {}
            load_table(con, schema, table, source.run(f'SELECT * FROM "{table}"'), decimals)
    return tables
