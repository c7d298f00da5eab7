"""What every rewrite pass may read: the bound query, the federation, the requested cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlglot import exp

from veilql.engine.plan.nodes import Plan
from veilql.engine.sql.bound import BoundQuery
from veilql.policies.model import Federation

MAX_DECIMALS = 6


@dataclass(frozen=True)
class Context:
    """Inputs of the compiler besides the plan being rewritten."""

    bound: BoundQuery
    federation: Federation
    epsilon: float
    delta: float
    mechanism: str = "auto"

    def party_of(self, alias: str) -> str:
        """The party owning FROM entry ``alias``."""
        return self.bound.table(alias).party

    def decimals_of(self, node: exp.Expression) -> int:
        """Fixed-point digits for ``node``: the most of its columns' and literals' digits."""
        digits = 0
        for col in node.find_all(exp.Column):
            policy = self.bound.table(col.table).policy.column(col.name)
            if policy is not None:
                digits = max(digits, policy.decimals)
        for lit in node.find_all(exp.Literal):
            if not lit.is_string and "." in lit.this:
                mantissa = lit.this.lower().split("e")[0]
                digits = max(digits, len(mantissa.split(".")[1].rstrip("0")))
        return min(digits, MAX_DECIMALS)


class Pass(Protocol):
    """The contract of a rewrite pass: a new plan from the old one."""

    def __call__(self, plan: Plan, ctx: Context) -> Plan: ...
