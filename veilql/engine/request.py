"""What the analyst asks every party node, and the facts every node derives from a plan the
same way: who takes part, the plan's digest, where ledgers live."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from veilql.engine.plan.nodes import Plan
from veilql.policies.model import Federation

Progress = Callable[[str, str], None]  # (party, step) -> None


@dataclass(frozen=True)
class QueryRequest:
    """What the analyst asks every node: the SQL and the requested cost."""

    query_id: str
    sql: str
    analyst: str
    epsilon: float | None = None
    delta: float | None = None
    mechanism: str = "auto"
    purpose: str = ""  # the analyst's stated purpose, recorded in each charged ledger entry
    identity: str = "self-asserted"  # "certificate" when a `veil serve` node checked it

    def to_bytes(self) -> bytes:
        """JSON encoding, for the network."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> QueryRequest:
        """Inverse of ``to_bytes``."""
        return cls(**json.loads(data))


def participants(plan: Plan) -> tuple[str, ...]:
    """Parties that take part in running ``plan`` (its data parties and compute parties, and
    the owners of dimension tables sent to them)."""
    owners = tuple(owner for owner, _, _ in plan.shipments)
    if plan.mode == "local":
        return tuple(dict.fromkeys((*plan.parties, *owners)))
    return tuple(dict.fromkeys((*plan.compute, *plan.parties, *owners)))


def plan_hash(plan: Plan) -> str:
    """A digest of the plan every participant compiles; they must all agree on it."""
    return hashlib.sha256(plan.to_s().encode()).hexdigest()


def ledger_dir_override(federation: Federation) -> Path | None:
    """``$VEIL_LEDGER_DIR``, when set, replaces the federation's ledger folder."""
    env = os.environ.get("VEIL_LEDGER_DIR")
    return Path(env) if env else None
