"""Connectors: a party's data stays in its own engine."""
