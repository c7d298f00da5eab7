"""``veil explain``: a plan as a person reads it.

The plan's dataclasses (``nodes``) render their own parts (``to_s``); this module puts
them together for a whole plan: the local steps, the join, the secure steps, the noise and
what the analyst computes after release, and the form of a UNION ALL plan.
"""

from __future__ import annotations

from collections.abc import Sequence

from veilql.engine.plan.nodes import AggregateSpec, OutputSpec, Plan, _num


def plan_text(plan: Plan) -> str:
    """``plan`` as a person reads it (``veil explain``)."""
    if plan.mode == "union":
        return _union_to_s(plan)
    out = [f"plan ({plan.mode}): {' '.join(plan.sql.split())}"]
    for owner, to, d in plan.shipments:
        out.append(f"0. {owner} sends its dimension table {d.table} ({', '.join(d.columns)}) "
                   f"to {to}: reveals the table to {to}, and to {owner} nothing of which "
                   "rows are used")
    out.append("1. local work, each party on its own engine:")
    out += ["   " + line for s in plan.steps for line in s.to_s().splitlines()]
    n = 2
    if plan.mode == "local":
        party = plan.steps[0].party
        out.append(
            f"{n}. {party} computes the aggregates on its own rows and adds the noise; "
            "nothing is secret-shared and no other party takes part"
        )
    else:
        if any(j.mode == "oblivious" for j in plan.joins):
            out.append(
                f"{n}. each party secret-shares one row per privacy unit among the "
                f"compute parties {', '.join(plan.compute)}, padded to its declared "
                "max_units (the hub) or laid out in cuckoo bins (the others); reveals "
                "only the declared bounds"
            )
        else:
            out.append(
                f"{n}. each party secret-shares one row per privacy unit among the compute "
                f"parties {', '.join(plan.compute)}; reveals each party's number of units"
            )
        for j in plan.joins:
            n += 1
            out.append(f"{n}. {j.to_s()}")
        if plan.cross is not None:
            n += 1
            out.append(f"{n}. secure predicate on shares: {plan.cross.sql()}")
        if plan.own_total:
            n += 1
            out.append(f"{n}. {outer_line(plan)}")
        n += 1
        cells = " x ".join(
            f"{g.output}{list(g.domain) if g.domain is not None else '[private keys]'}"
            for g in plan.groups) or "one cell"
        out.append(f"{n}. secure aggregates over {cells}:")
    out += _aggregate_lines(plan.aggregates)
    for m in plan.merge:
        out.append(f"   cells merged on shares into {m.output}{list(m.domain)} (over "
                   f"{', '.join(m.parts)}), a public 0/1 matrix, before the noise")
    if plan.threshold is not None:
        n += 1
        out.append(
            f"{n}. partition selection: a cell (private group key) is released only when "
            f"its noisy __selection count exceeds {plan.threshold}; the compute parties "
            "learn which cells pass, the key owner sends only those keys to the analyst"
        )
    n += 1
    central = [getattr(a.noise, "central", False) for a in plan.aggregates]
    if plan.mode == "local":
        who = "the party adds noise"
    elif central and all(central):
        who = "one draw per cell is sampled on shares, known to no party,"
    elif any(central):
        who = ("sampled on shares where marked, else the compute parties each add their "
               "own noise,")
    else:
        who = "the compute parties each add noise"
    out.append(
        f"{n}. noise: {who} before anything is opened; "
        f"total cost epsilon={_num(plan.epsilon)} delta={_num(plan.delta)}, charged at "
        f"{', '.join(plan.charged)}"
    )
    n += 1
    post = [_statistic_line(o) for o in list(plan.outputs) + list(plan.hidden)
            if o.kind in ("var", "quantile")]
    post += [f"compute {o.name} = {o.post.sql()}" for o in plan.outputs
             if o.kind == "expr" and o.post is not None]
    if plan.having is not None:
        post.append(f"HAVING {plan.having.sql()}")
    if plan.order_by:
        post.append(
            "ORDER BY "
            + ", ".join(e.sql() + (" DESC" if d else "") for e, d in plan.order_by)
        )
    if plan.limit is not None:
        post.append(f"LIMIT {plan.limit}")
    tail = (" then " + ", ".join(post)) if post else ""
    if any(o.kind == "expr" for o in plan.outputs):
        tail += (" (error bars of computed outputs: interval arithmetic over their noisy "
                 "parts, each at 95%^(1/k) for k parts)")
    if any(o.kind == "quantile" for o in list(plan.outputs) + list(plan.hidden)):
        tail += (" (quantiles: counts clamped at 0, error bar the buckets the 95% noise "
                 "band allows; MIN/MAX: the lowest/highest bucket whose noisy count "
                 "passes the band)")
    out.append(f"{n}. release: only the analyst sees the noisy values{tail}")
    out += [f"note: {note}" for note in plan.notes]
    return "\n".join(out)


def outer_line(plan: Plan) -> str:
    """What ``plan_text`` says of an outer join across parties (``operators/outer.py``)."""
    own, opt, g0 = plan.own_total, plan.optional, list(plan.shift)
    if plan.outer == "FULL" and plan.cross is not None:
        return (f"FULL JOIN ... ON with further conditions (the predicate above): the "
                "matched pairs add their products; each row of either side that matches "
                "a row of the other subtracts its factors times the other's value on a "
                f"row of NULLs ({opt}: {g0}, {own}: {list(plan.shift_own)}; the predicate "
                "OR-ed over the other's rows, one inner product per side); each side "
                "secret-shares its own aggregates times the other's value (one word per "
                "aggregate and cell), added on shares before the noise, so that either "
                "side's unmatched rows count with NULLs; reveals nothing more than the "
                "inner join")
    if plan.outer == "FULL":
        return (f"FULL JOIN: {opt} shifts its factors by their value on a row of NULLs "
                f"{g0}, {own} by its own {list(plan.shift_own)}"
                + (f" (the grouping side's in cell {plan.null_cell} of its keys, their "
                   "values on NULLs)" if plan.null_cell >= 0 else "")
                + ", before sharing; each "
                "secret-shares its own aggregates times the other's (one word per "
                "aggregate and cell), and the compute parties subtract the product of "
                "the two times the number of matched units (known to them from the "
                "join), on shares before the noise, so that either side's unmatched "
                "units count with NULLs; reveals nothing more than the inner join")
    if plan.cross is not None:
        return (f"{plan.outer} JOIN ... ON with further conditions (the predicate above): "
                f"the matched pairs add their products; each row of {own} that matches "
                f"a row of {opt} subtracts its factors times {opt}'s value on a row of "
                f"NULLs {g0} (the predicate OR-ed over {opt}'s rows, one inner product); "
                f"{own} secret-shares its own aggregates times the same (one word per "
                "aggregate and cell), added on shares before the noise, so that its "
                "unmatched rows count with NULLs; reveals nothing more than the inner join")
    return (f"{plan.outer} JOIN: {opt} shifts its factors by their "
            f"value on a row of NULLs {g0} before sharing; "
            f"{own} secret-shares its own aggregates times the same (one "
            "word per aggregate and cell), added on shares before the noise, so that "
            f"{own}'s unmatched units count with NULLs; reveals nothing "
            "more than the inner join")


def _union_to_s(plan: Plan) -> str:
    """``veil explain`` of a UNION ALL plan: each party's branch SQL and the secure sum."""
    out = [f"plan (union): {' '.join(plan.sql.split())}",
           "1. local work, each branch at its own party on its own engine (bounded rows per "
           "unit, clamped values, aggregated per cell there):"]
    for i, b in enumerate(plan.branches):
        out.append(f"   branch {i + 1}:")
        out += ["     " + line for line in b.steps[0].to_s().splitlines()]
    cells = " x ".join(f"{g.output}{list(g.domain or ())}" for g in plan.groups) or "one cell"
    n = len(plan.aggregates)
    out.append(
        f"2. each data party ({', '.join(plan.charged)}) sums its own branches and "
        f"secret-shares its vector of {n} aggregate(s) x cells over {cells} among the compute "
        f"parties {', '.join(plan.compute)}; reveals nothing but that public length")
    out.append("3. secure sum of the parties' vectors on shares (no join: a person's "
               "contribution is bounded by the sum over the branches of each branch's bound):")
    out += _aggregate_lines(plan.aggregates, branches=True)
    central = [getattr(a.noise, "central", False) for a in plan.aggregates]
    who = ("one draw per cell is sampled on shares, known to no party," if all(central) else
           "the compute parties add noise on shares")
    out.append(f"4. noise: {who} before anything is opened; total cost "
               f"epsilon={_num(plan.epsilon)} delta={_num(plan.delta)}, charged at "
               f"{', '.join(plan.charged)}")
    post = [f"compute {o.name} = {o.post.sql()}" for o in plan.outputs
            if o.kind == "expr" and o.post is not None]
    if plan.having is not None:
        post.append(f"HAVING {plan.having.sql()}")
    if plan.order_by:
        post.append("ORDER BY " + ", ".join(e.sql() + (" DESC" if d else "")
                                            for e, d in plan.order_by))
    if plan.limit is not None:
        post.append(f"LIMIT {plan.limit}")
    tail = (" then " + ", ".join(post)) if post else ""
    out.append(f"5. release: after every charged party committed, only the analyst sees the "
               f"noisy values{tail}")
    return "\n".join(out)


_FAMILY = "(histogram {name})"


def _aggregate_lines(aggregates: Sequence[AggregateSpec], *,
                     branches: bool = False) -> list[str]:
    """One ``veil explain`` line per aggregate, a histogram's bucket counts after its first
    folded into one line (they share one noise plan and one share of the budget);
    ``branches``: a UNION ALL's aggregates (see ``AggregateSpec.to_s``)."""
    out: list[str] = []
    shown: dict[str, int] = {}
    for a in aggregates:
        if a.family and a.family != a.name:
            shown[a.family] = shown.get(a.family, 0) + 1
            continue
        out.append(f"   {a.to_s(branches=branches)}")
        if a.family:
            out.append(f"   {_FAMILY.format(name=a.family)}")
    for family, more in shown.items():  # the histogram's other buckets, in one line
        at = out.index(f"   {_FAMILY.format(name=family)}")
        out[at] = (f"   ... and {more} more bucket counts of this histogram "
                   f"({family[:-1]}1 to {family[:-1]}{more}): one noisy count per bucket, "
                   "the same noise plan, one share of the budget for all")
    return out
_STAT_NAMES = {"var_samp": "VAR_SAMP", "var_pop": "VAR_POP", "stddev_samp": "STDDEV_SAMP",
               "stddev_pop": "STDDEV_POP"}


def _statistic_line(o: OutputSpec) -> str:
    """How the analyst computes a variance or a quantile output."""
    if o.kind == "var":
        sq, total, count = o.aggregates
        return (f"compute {o.name} = {_STAT_NAMES[o.stat]} from {sq} (sum of squares), "
                f"{total} (sum), {count} (count), clamped at 0")
    assert o.buckets is not None
    what = {"min": "MIN (lowest bucket passing the noise band)",
            "max": "MAX (highest bucket passing the noise band)",
            "distinct": "COUNT(DISTINCT) (the buckets passing the noise band)"}.get(
        o.stat, f"QUANTILE_{o.stat.upper()}({_num(o.q or 0.0)})")
    return (f"read {o.name} = {what} off the noisy histogram {o.aggregates[0]} "
            f"({o.buckets.to_s()})")
