"""Rewrite passes from a bound query to a plan, in the order of ``RULES``.

Each pass is one module with one public function ``(plan, ctx) -> plan``:
``push_local`` (per-party local columns, group keys, aggregates), ``place_secure``
(local or secure mode, join stages, cross-party predicates), ``outer_join`` (a LEFT or
RIGHT JOIN across two parties), ``bound_contributions``
(the local SQL with row bounding and clamping), ``attach_noise`` (sensitivities,
noise, cost) and ``check_ranges`` (every released value, noise included, provably fits
the 64-bit ring, else the query is refused). Policy checks happen before, in
``veilql.engine.sql.bind``.
"""

from __future__ import annotations

from collections.abc import Mapping

from veilql.engine.dp.calibrate import exact_amount
from veilql.engine.plan.nodes import Plan
from veilql.engine.rewrite.attach_noise import attach_noise
from veilql.engine.rewrite.bound_contributions import bound_contributions
from veilql.engine.rewrite.check_ranges import check_ranges
from veilql.engine.rewrite.context import Context, Pass
from veilql.engine.rewrite.outer_join import outer_join
from veilql.engine.rewrite.place_secure import place_secure
from veilql.engine.rewrite.push_local import push_local
from veilql.engine.rewrite.union import plan_union
from veilql.engine.sql.bind import bind
from veilql.engine.sql.limits import recursion_guard
from veilql.engine.sql.parse import ParsedQuery, parse
from veilql.engine.sql.union import union_body
from veilql.policies.model import Federation

RULES: tuple[Pass, ...] = (push_local, place_secure, outer_join, bound_contributions,
                          attach_noise, check_ranges)


def resolve_cost(
    parsed: ParsedQuery, federation: Federation, epsilon: float | None, delta: float | None
) -> tuple[float, float]:
    """The query's (epsilon, delta): OPTIONS clause, else the flags, else the federation default."""
    if parsed.epsilon is not None:
        eps = parsed.epsilon
        dlt = parsed.delta if parsed.delta is not None else (
            delta if delta is not None else federation.default_delta)
        return eps, dlt
    eps = epsilon if epsilon is not None else federation.default_epsilon
    if parsed.delta is not None:
        return eps, parsed.delta
    return eps, delta if delta is not None else federation.default_delta


def compile_plan(
    sql: str, federation: Federation, *, epsilon: float | None = None,
    delta: float | None = None, mechanism: str = "auto",
    catalog: Mapping[str, Mapping[str, list[str]]] | None = None,
    stop_after: str | None = None,
) -> Plan:
    """Parse, bind and plan ``sql``; ``stop_after`` names a pass to stop after (tests)."""
    parsed = parse(sql)
    eps, dlt = resolve_cost(parsed, federation, epsilon, delta)
    if union_body(parsed) is not None:  # a UNION ALL in FROM: one plan per branch, summed
        return plan_union(parsed, federation, eps, dlt, mechanism, lambda branch: compile_plan(
            branch, federation, epsilon=eps, delta=dlt, mechanism=mechanism, catalog=catalog))
    bound = bind(parsed, federation, catalog)
    ctx = Context(bound, federation, eps, dlt, mechanism)
    plan = Plan(sql=sql, mode="secure", compute=(), steps=(), outputs=(),
                epsilon=exact_amount(eps, "epsilon"), delta=exact_amount(dlt, "delta"))
    with recursion_guard("planning"):  # a backstop: parse and bind bound the depth already
        for rule in RULES:
            plan = rule(plan, ctx)
            if stop_after == rule.__name__:
                break
    return plan


__all__ = ["RULES", "Context", "compile_plan", "resolve_cost"]
