"""Connectors: a party's data stays in its own engine."""

from veilql.connectors.base import ColumnInfo, Connector, open_connector

__all__ = ["ColumnInfo", "Connector", "open_connector"]
