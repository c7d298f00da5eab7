"""Spark for tests: a local session, and a party's tables as Parquet-backed catalog tables.

The tests' Spark is ``local[1]`` with one shuffle partition and no UI or logs (these
machines have two cores). Its SparkContext is started once per process and shared: each
test module takes a session of its own (``newSession``) and drops the databases it made;
the JVM stops when the process ends. A party's tables become external tables of a fresh
database over Parquet files in a temporary warehouse folder, which is how a deployment
with a local warehouse would name them too (see docs/deploy.md).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from veilql.connectors.base import open_connector
from veilql.policies.loader import load_federation

MASTER = "local[1]"
#: The spec suffix every test connector uses besides ``database``.
CONF = {
    "spark.sql.shuffle.partitions": "1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.log.level": "OFF",
    "spark.driver.memory": "1g",
}


def why_not() -> str:
    """Why Spark tests cannot run here ("" when they can), for ``pytest.skip``."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install -e '.[test]')"
    from veilql.connectors.spark import java_available

    if not java_available():
        return "no Java runtime for Spark (install Java 17 or 21, or set $JAVA_HOME)"
    return ""


def spec(database: str) -> str:
    """The connector spec of ``database`` in the tests' local Spark.

    >>> spec("ins").startswith("spark:local[1]?database=ins&spark.sql.shuffle.partitions=1")
    True
    """
    return f"spark:{MASTER}?database={database}&" + "&".join(f"{k}={v}" for k, v in CONF.items())


@contextmanager
def spark_session() -> Iterator[Any]:
    """A Spark session of the process's shared local SparkContext (started if needed)."""
    from pyspark.sql import SparkSession

    from veilql.connectors.spark import _quiet_pyspark_loggers

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no look-up of the host's name
    builder = SparkSession.builder.master(MASTER).appName("veilql-tests")
    for key, value in CONF.items():
        builder = builder.config(key, value)
    _quiet_pyspark_loggers()
    session = builder.getOrCreate().newSession()
    session.conf.set("spark.sql.session.timeZone", "UTC")
    yield session


@contextmanager
def fresh_database(spark: Any, warehouse: Path) -> Iterator[str]:
    """A new empty database (its tables' files under ``warehouse``), dropped on exit."""
    name = f"veil_test_{os.getpid()}_{secrets.token_hex(4)}"
    spark.sql(f"CREATE DATABASE `{name}` LOCATION '{warehouse / name}'")
    try:
        yield name
    finally:
        spark.sql(f"DROP DATABASE IF EXISTS `{name}` CASCADE")


def load_table(spark: Any, database: str, table: str, data: pa.Table, warehouse: Path) -> Path:
    """Write ``data`` as Parquet under ``warehouse`` and make it ``database.table``; the
    table's folder."""
    folder = warehouse / database / table
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, folder / "part-0.parquet")
    spark.sql(f"CREATE TABLE `{database}`.`{table}` USING parquet LOCATION '{folder}'")
    return folder


def load_party(spark: Any, database: str, federation: Path, party: str,
               warehouse: Path) -> list[str]:
    """Copy every table of ``party`` in the federation file into ``database``, with the
    types its connector reports (a CSV's DOUBLE stays DOUBLE); their names."""
    fed = load_federation(federation)
    p = fed.party(party)
    assert p is not None, f"no party {party} in {federation}"
    with open_connector(p.connector, fed.root) as source:
        tables = list(source.catalog())
        for table in tables:
            load_table(spark, database, table, source.run(f'SELECT * FROM "{table}"'),
                       warehouse)
    return tables
