"""MySQL/MariaDB for tests: find the local server, and load a party's tables into a fresh
database.

The server is ``$VEIL_TEST_MYSQL`` (a ``mysql://`` URL naming any database) when set, else
``DEFAULT_URL`` (the machine's MariaDB: root, empty password). Every database made here
has a unique name and is dropped on exit, so parallel runs never see each other's tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from veilql.connectors.base import open_connector
from veilql.policies.loader import load_federation

ENV = "VEIL_TEST_MYSQL"
DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"
#: Digits of the DECIMAL that float money columns are stored as (scale from the policy).
MONEY_PRECISION = 12
_INSERT_ROWS = 2_000


def server_url() -> tuple[str | None, str]:
    """(a URL of a reachable server, "") or (None, why not), for ``pytest.skip``."""
    try:
        import pymysql  # noqa: F401
    except ImportError:
        return None, "PyMySQL is not installed (pip install PyMySQL)"
    url = os.environ.get(ENV) or DEFAULT_URL
    try:
        with _admin(url):
            return url, ""
    except Exception as exc:  # noqa: BLE001 - any reason the server is not there
        why = str(exc).strip() or type(exc).__name__
        return None, (f"no MySQL/MariaDB server reachable at {url} (set ${ENV}, or start "
                      "it: start-stop-daemon --start --oknodo --background --exec "
                      f"/usr/sbin/mariadbd): {why}")


def database_url(url: str, database: str) -> str:
    """``url`` naming ``database`` instead.

    >>> database_url("mysql://root@h:3306/test?connect_timeout=3", "other")
    'mysql://root@h:3306/other?connect_timeout=3'
    """
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


@contextmanager
def _admin(url: str) -> Iterator[Any]:
    """A read-write autocommit connection to the server of ``url``."""
    import pymysql

    from veilql.connectors.mysql import connect_args

    args = connect_args(url)
    args["connect_timeout"] = 3
    con = pymysql.connect(**args, charset="utf8mb4", autocommit=True)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def fresh_database(url: str) -> Iterator[tuple[Any, str]]:
    """A read-write autocommit connection and a new empty database, dropped on exit."""
    name = f"veil_test_{os.getpid()}_{secrets.token_hex(4)}"
    with _admin(url) as con:
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield con, name
        finally:
            with con.cursor() as cur:
                cur.execute(f"DROP DATABASE `{name}`")


def mysql_type(arrow: pa.DataType, decimals: int | None = None) -> str:
    """The MySQL column type for an Arrow column; a float column with a policy's
    ``decimals`` (money) becomes an exact DECIMAL, as a real warehouse would store it.

    >>> mysql_type(pa.float64(), 2), mysql_type(pa.decimal128(12, 2)), mysql_type(pa.int64())
    ('decimal(12,2)', 'decimal(12,2)', 'bigint')
    """
    if pa.types.is_floating(arrow):
        return f"decimal({MONEY_PRECISION},{decimals})" if decimals else "double"
    if pa.types.is_decimal(arrow):
        return f"decimal({arrow.precision},{arrow.scale})"
    simple = {
        pa.int16(): "smallint", pa.int32(): "int", pa.int64(): "bigint",
        pa.bool_(): "boolean", pa.date32(): "date", pa.string(): "varchar(255)",
        pa.large_string(): "varchar(255)",
    }
    if arrow in simple:
        return simple[arrow]
    raise TypeError(f"no MySQL type for Arrow {arrow} in the test loader")


def load_table(con: Any, database: str, table: str, data: pa.Table,
               decimals: dict[str, int] | None = None) -> None:
    """Create ``database.table`` with ``mysql_type`` columns and insert ``data``."""
    decimals = decimals or {}
    types = {f.name: mysql_type(f.type, decimals.get(f.name)) for f in data.schema}
    columns = ", ".join(f"`{n}` {t}" for n, t in types.items())
    scales = {n: int(t.split(",")[1].rstrip(")")) for n, t in types.items()
              if t.startswith("decimal")}
    names = list(types)
    values = data.to_pydict()
    rows = [tuple(_exact(v, scales.get(n)) for n, v in zip(names, row, strict=True))
            for row in zip(*(values[n] for n in names), strict=True)]
    insert = (f"INSERT INTO `{database}`.`{table}` ({', '.join(f'`{n}`' for n in names)}) "
              f"VALUES ({', '.join(['%s'] * len(names))})")
    with con.cursor() as cur:
        cur.execute(f"CREATE TABLE `{database}`.`{table}` ({columns}) ENGINE=InnoDB")
        for start in range(0, len(rows), _INSERT_ROWS):
            cur.executemany(insert, rows[start:start + _INSERT_ROWS])


def _exact(value: Any, scale: int | None) -> Any:
    """A float bound for a DECIMAL column as the decimal it was written as (e.g. 784.99)."""
    if scale is None or value is None or isinstance(value, Decimal):
        return value
    return Decimal(f"{value:.{scale}f}")


def load_party(con: Any, database: str, federation: Path, party: str) -> list[str]:
    """Copy every table of ``party`` in the federation file into ``database``; their names.

    Float columns with ``decimals`` in the party's policy become DECIMAL of that scale.
    """
    fed = load_federation(federation)
    p = fed.party(party)
    assert p is not None, f"no party {party} in {federation}"
    with open_connector(p.connector, fed.root) as source:
        tables = list(source.catalog())
        for table in tables:
            policy = p.tables.get(table)
            decimals = {c.name: c.decimals for c in policy.columns.values()} if policy else {}
            load_table(con, database, table, source.run(f'SELECT * FROM "{table}"'), decimals)
    return tables
