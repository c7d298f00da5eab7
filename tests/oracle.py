"""Run the same SQL securely and in plain DuckDB over the union of the parties' tables."""

from __future__ import annotations

import math
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

import veilql
from veilql.connectors.base import open_connector
from veilql.engine.dp import LargeEpsilonWarning
from veilql.policies.loader import load_federation
from veilql.policies.model import Federation

HUGE_EPSILON = 1e12


def oracle_federation(src: Path, dst: Path) -> Path:
    """A copy of the federation at ``src`` with an analyst whose budget never runs out."""
    shutil.copytree(src, dst)
    fed = dst / "federation.toml"
    with fed.open("a") as fh:
        fh.write("\n[analyst.oracle]\nepsilon = 1e15\ndelta = 0.5\n")
    return fed


def oblivious_federation(src: Path, dst: Path, max_units: int = 100_000) -> Path:
    """``oracle_federation`` with every table asking for the oblivious join
    (``join_reveal = "nothing"``) and declaring ``max_units``."""
    fed = oracle_federation(src, dst)
    for policy in sorted((dst / "policies").glob("*.toml")):
        text = policy.read_text()
        text = re.sub(r'^join_reveal = "[a-z]+"\n', "", text, flags=re.M)
        text = re.sub(r"^(privacy_unit = .*)$",
                      rf'\1\njoin_reveal = "nothing"\nmax_units = {max_units}', text, flags=re.M)
        policy.write_text(text)
    return fed


def local_federation(name: str, parties: tuple[str, ...]) -> str:
    """A federation file's text: ``parties`` in-process, each a DuckDB file under ``data/``,
    policies under ``policies/``, and analyst ``oracle`` with an unlimited budget."""
    return "\n".join(["[federation]", f'name = "{name}"', 'policies = "policies"', ""] + [
        f'[[party]]\nname = "{p}"\naddress = "local"\nconnector = "duckdb:data/{p}.duckdb"\n'
        for p in parties] + ["[analyst.oracle]", "epsilon = 1e15", "delta = 0.5", ""])


def write_unit_table(path: Path, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """DuckDB file ``path`` with table ``t (unit BIGINT, <columns>)`` holding ``rows``
    (one parameterised statement: executemany is slow)."""
    con = duckdb.connect(str(path))
    try:
        con.execute(f"CREATE TABLE t (unit BIGINT, {columns})")
        if rows:
            one = "(" + ", ".join("?" * len(rows[0])) + ")"
            con.execute(f"INSERT INTO t VALUES {', '.join([one] * len(rows))}",
                        [v for row in rows for v in row])
    finally:
        con.close()


def union_connection(federation: Federation) -> duckdb.DuckDBPyConnection:
    """One DuckDB holding every party's tables as ``party.table`` views (the trusted union)."""
    con = duckdb.connect()
    for party in federation.parties:
        con.execute(f'CREATE SCHEMA "{party.name}"')
        conn = open_connector(party.connector, federation.root)
        for table in conn.catalog():
            arrow = conn.run(f'SELECT * FROM "{table}"')
            con.register(f"__{party.name}_{table}", arrow)
            con.execute(f'CREATE TABLE "{party.name}"."{table}" AS '
                        f'SELECT * FROM "__{party.name}_{table}"')
        conn.close()
    return con


def oracle_pair(path: Path) -> Iterator[tuple[veilql.Session, duckdb.DuckDBPyConnection]]:
    """Yield a session as analyst ``oracle`` over the federation at ``path`` and DuckDB over
    its union (``union_connection``), both closed after: the body of a module fixture."""
    session = veilql.connect(path, analyst="oracle")
    con = union_connection(session.federation)
    yield session, con
    session.close()
    con.close()


def run_huge(session: veilql.Session, sql: str, delta: float,
             quiet: type[Warning] = LargeEpsilonWarning) -> veilql.Result:
    """The query at ``HUGE_EPSILON`` and ``delta``, warnings of class ``quiet`` silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", quiet)
        return session.sql(sql, epsilon=HUGE_EPSILON, delta=delta)


def plain(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    """The query in plain DuckDB, without the DP clause."""
    sql = re.sub(r"WITH\s+DIFFERENTIAL_PRIVACY\s+OPTIONS\s*\([^)]*\)", "", sql, flags=re.I)
    return con.execute(sql).fetchall()


def same(a: Any, b: Any, tol: float) -> bool:
    """Equal values: numbers within ``tol``, None/NaN matching None."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=tol)


def load(path: Path) -> Federation:
    """Load a federation file."""
    return load_federation(path)
