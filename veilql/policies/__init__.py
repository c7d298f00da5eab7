"""Federation and policy files: the model (frozen dataclasses) and the TOML loader."""

from veilql.policies.discovery import find_federation
from veilql.policies.loader import load_federation

__all__ = ["find_federation", "load_federation"]
