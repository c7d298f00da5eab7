"""SELECT, HAVING, ORDER BY and LIMIT: the outputs a query releases.

Plain aggregates and group columns become outputs; an expression over released aggregates
(``SUM(a) / SUM(b)``) becomes a post-processing output over hidden aggregates; HAVING and
ORDER BY are rewritten over output names, since they act on released noisy values.
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from veilql.engine.sql import checks, functions
from veilql.engine.sql.aggregates import Signature, bind_aggregate, is_aggregate
from veilql.engine.sql.bound import (
    BoundGroup,
    Output,
)
from veilql.engine.sql.distinct import MAX_BUCKETS, exact_buckets
from veilql.engine.sql.groups import default_name, select_items, unique_name
from veilql.engine.sql.scope import Scope
from veilql.errors import PolicyError, UnsupportedError

#: A MIN or MAX of one party's expression that a released comparison reads has one bucket
#: per value when its bounds hold at most this many (``rewrite/histogram.exact``).
MAX_EXACT = 100_000
_COMPARISONS = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE, exp.Between)


class Outputs:
    """SELECT items as outputs; aggregates that only expressions, HAVING or ORDER BY read
    become hidden outputs."""

    def __init__(self, scope: Scope, group_by: tuple[BoundGroup, ...]) -> None:
        self.scope = scope
        self.group_by = group_by
        self.visible: list[Output] = []
        self.hidden: list[Output] = []
        self.signatures: dict[Signature, str] = {}
        self.taken: set[str] = set()
        # MIN/MAX that a released comparison reads (``_check_decided``): by signature (the
        # output may be bound later) or by output name (a HAVING alias)
        self.exact: set[Signature | str] = set()

    def all_outputs(self) -> tuple[Output, ...]:
        """Visible outputs in SELECT order, then the hidden ones; a MIN/MAX a comparison
        reads marked ``exact`` (one bucket per value)."""
        names = {(k if isinstance(k, str) else self.signatures.get(k, "")).lower()
                 for k in self.exact}
        return tuple(replace(o, exact=True) if o.name.lower() in names else o
                     for o in self.visible + self.hidden)

    def bind_select(self, select: exp.Select) -> None:
        """Every SELECT item, in order. Plain aggregates and group columns are bound first,
        so that an expression over aggregates reads the selected ones where it can (and a
        hidden aggregate only for the others)."""
        items = select_items(select)
        explicit = {a.lower() for a, _ in items if a}
        outputs: list[tuple[Output, Signature | None] | None] = []
        for _alias, node in items:
            later = (not is_aggregate(node) and node.find(exp.AggFunc) is not None) or \
                self._group_aggregated(node) is not None or \
                _boolean_extreme(node)  # MAX(g) of its own GROUP BY g; MAX(a > 0)
            outputs.append(None if later else self._item(node))
        names = []
        for (alias, node), done in zip(items, outputs, strict=True):
            default = done[0].name if done is not None else default_name(node)
            name = alias or unique_name(default, self.taken | explicit)
            if name.lower() in self.taken:
                raise UnsupportedError(f"output name {name!r} is used twice",
                                       "give each SELECT item its own alias")
            self.taken.add(name.lower())
            names.append(name)
            if done is not None and done[1] is not None:
                self.signatures.setdefault(done[1], name)
        for i, ((_alias, node), done) in enumerate(zip(items, outputs, strict=True)):
            if done is None:
                done = (Output(names[i], "expr", post=self._post(node, "SELECT")), None)
            self.visible.append(replace(done[0], name=names[i]))
        if not any(o.kind not in ("group", "expr") for o in self.visible + self.hidden):
            raise UnsupportedError(
                "a query must release at least one aggregate (COUNT, SUM or AVG)",
                "add e.g. COUNT(*) to SELECT; VeilQL releases only noisy aggregates",
            )

    def _item(self, node: exp.Expr) -> tuple[Output, Signature | None]:
        """One SELECT item (without its alias) as an Output with a default name."""
        if is_aggregate(node):
            return bind_aggregate(node, self.scope)
        if not list(node.find_all(exp.Column)):
            text = node.sql(dialect="duckdb")
            if not isinstance(node, exp.Literal | exp.Boolean | exp.Null | exp.Neg | exp.Add
                              | exp.Sub | exp.Mul | exp.Div | exp.Cast):
                raise UnsupportedError(f"SELECT item {text} is not a group column or an "
                                       "aggregate", checks.SUPPORTED_SQL)
            self._check_post(node, "SELECT")
            return Output(default_name(node), "expr", post=node.copy()), None
        group = self._group_of(node)
        return (Output(group.name if group.column is None else group.column.column, "group",
                       column=group.column, group=group),
                ("group", group.expr.sql(dialect="duckdb")))

    def _group_of(self, node: exp.Expr) -> BoundGroup:
        """The GROUP BY item a non-aggregate SELECT item (or HAVING term) names."""
        if isinstance(node, exp.Column):
            col = self.scope.resolve(node)
            if col.policy.role == "key":
                raise checks.refuse_key(col, "SELECT")
            for g in self.group_by:
                if g.column == col:
                    return g
            if col.policy.role == "value":
                raise PolicyError(
                    f"value column {col.alias}.{col.column} cannot be selected as is",
                    f"aggregate it: SUM({col.alias}.{col.column}) or AVG({col.alias}."
                    f"{col.column})",
                )
            raise UnsupportedError(
                f"column {col.alias}.{col.column} must appear in GROUP BY",
                f"add GROUP BY {col.alias}.{col.column}",
            )
        text = self.scope.qualify(node).sql(dialect="duckdb")
        for g in self.group_by:  # checked as a GROUP BY key already (across parties too)
            if g.expr.sql(dialect="duckdb") == text:
                return g
        functions.check_roles(node, self.scope.resolve, context="group", where="SELECT")
        raise UnsupportedError(f"SELECT item {node.sql(dialect='duckdb')} must appear in "
                               "GROUP BY", f"add GROUP BY {node.sql(dialect='duckdb')}")

    def _group_aggregated(self, node: exp.Expr) -> BoundGroup | None:
        """The GROUP BY item that ``MAX``/``MIN``/``ANY_VALUE``/``AVG``/``SUM`` (DISTINCT
        too, without FILTER) aggregates as a value, else None: in its own group it is one
        value, so the aggregate is post-processing of the released label (and count)."""
        if isinstance(node, exp.IgnoreNulls) and isinstance(node.this, exp.AnyValue):
            node = node.this  # DuckDB's ANY_VALUE skips NULLs
        if not isinstance(node, _OF_GROUP) or (isinstance(node, exp.Min | exp.Max)
                                                and node.expressions):
            return None
        found = self._aggregated_key(node)
        if found is None and isinstance(node, exp.AnyValue):
            raise UnsupportedError(
                f"{node.sql(dialect='duckdb')} is supported only of a GROUP BY key (in its "
                "group it is the key itself)", "select the group column itself, or MIN/MAX "
                "of a value column")
        return found

    def _aggregated_key(self, node: exp.Expr) -> BoundGroup | None:
        """The GROUP BY item ``node``'s argument is, else None."""
        arg = node.this
        while isinstance(arg, exp.Paren):
            arg = arg.this
        if isinstance(arg, exp.Distinct):
            if len(arg.expressions) != 1:
                return None
            arg = arg.expressions[0]
        if not list(arg.find_all(exp.Column)):
            return None
        if isinstance(arg, exp.Column):
            col = self.scope.resolve(arg)
            return next((g for g in self.group_by if g.column == col), None)
        text = self.scope.qualify(arg).sql(dialect="duckdb")
        return next((g for g in self.group_by if g.expr.sql(dialect="duckdb") == text), None)

    def _group_value(self, node: exp.Expr, group: BoundGroup) -> exp.Expression:
        """``MAX(g)`` (MIN, ANY_VALUE, AVG) of a group's own key as its released label;
        ``SUM(g)`` as ``g * COUNT(*)``, over the released label and noisy count."""
        signature = ("group", group.expr.sql(dialect="duckdb"))
        found = self.signatures.get(signature)
        if found is None:  # the label, released hidden (it is released with every cell)
            found = unique_name("__" + group.name, self.taken)
            self.taken.add(found.lower())
            self.hidden.append(Output(found, "group", column=group.column, group=group,
                                      hidden=True))
            self.signatures[signature] = found
        label: exp.Expression = exp.column(found)
        if isinstance(node, exp.Avg | exp.Sum) and not _numeric(group):
            raise UnsupportedError(
                f"{node.sql(dialect='duckdb')}: the group key {group.name} is not a number",
                f"select {group.name} itself, or MIN/MAX/ANY_VALUE of it")
        if isinstance(node, exp.Sum):  # each of the group's rows adds g
            count = self.aggregate_ref(exp.Count(this=exp.Star()))
            return exp.Mul(this=label, expression=count)
        if isinstance(node, exp.Avg):  # a DOUBLE, as DuckDB's AVG
            return exp.Mul(this=label, expression=exp.Literal.number("1.0"))
        return label

    def _boolean(self, node: exp.Expr) -> exp.Expression:
        """``MAX(c)`` / ``MIN(c)`` of a condition as a BOOLEAN, as DuckDB returns it: the
        MAX/MIN of its 0/1 value, read off a noisy histogram of two one-value buckets
        (``{0, 1}``: exact, NULL when no bucket passes the noise band), compared with 1."""
        return exp.Paren(this=exp.EQ(this=self.aggregate_ref(node),
                                     expression=exp.Literal.number(1)))

    def aggregate_ref(self, node: exp.Expr) -> exp.Column:
        """A reference to the output releasing aggregate ``node`` (hidden if new)."""
        output, signature = bind_aggregate(node, self.scope)
        assert signature is not None
        found = self.signatures.get(signature)
        if found is None:
            found = unique_name("__" + output.name, self.taken)
            self.taken.add(found.lower())
            self.hidden.append(replace(output, name=found, hidden=True))
            self.signatures[signature] = found
        return exp.column(found)

    def _post(self, node: exp.Expr, clause: str) -> exp.Expression:
        """An expression over aggregates as one over output names (post-processing)."""
        self._check_post(node, clause)
        self._check_decided(node, clause)

        def refer(n: exp.Expr) -> exp.Expr:
            group = self._group_aggregated(n)
            if group is not None:
                return self._group_value(n, group)
            if _boolean_extreme(n):
                return self._boolean(n)
            if is_aggregate(n):
                return self.aggregate_ref(n)
            if isinstance(n, exp.Column):
                raise UnsupportedError(
                    f"{clause} item {node.sql(dialect='duckdb')} combines the column "
                    f"{n.sql(dialect='duckdb')} with aggregates",
                    "an expression over released values may use aggregates and literals; "
                    "select group columns on their own")
            return n

        return node.copy().transform(refer)

    def _check_decided(self, node: exp.Expr, clause: str) -> None:
        """Refuse a released condition over a quantile, MIN or MAX known only to within a
        bucket of several values: the bucketing, not the data, would decide it (in SELECT
        and HAVING alike; a HAVING may also name such an output by its alias). A MIN or MAX
        of one party's expression whose bounds hold at most ``MAX_EXACT`` values is marked
        exact instead (one bucket per value, ``rewrite/histogram.exact``)."""
        by_name = {o.name.lower(): o for o in self.visible}
        for cmp in node.find_all(*_COMPARISONS):
            for n in cmp.walk():
                if self._group_aggregated(n) is not None:
                    continue  # a label, known exactly
                key: Signature | str
                if is_aggregate(n):
                    out, signature = bind_aggregate(n, self.scope)
                    assert signature is not None
                    key = signature
                elif isinstance(n, exp.Column) and not n.table and n.name.lower() in by_name:
                    out = by_name[n.name.lower()]
                    key = out.name
                else:
                    continue
                if out.kind != "quantile" or out.stat == "distinct" or out.bounds is None \
                        or exact_buckets(out.bounds, out.decimals):
                    continue
                if out.stat in ("min", "max") and self._exact_possible(out):
                    self.exact.add(key)
                    continue
                raise UnsupportedError(
                    f"{clause} item {node.sql(dialect='duckdb')} compares "
                    f"{n.sql(dialect='duckdb')}, which is released to within a bucket of "
                    f"several values (its bounds hold more than {MAX_BUCKETS} values; a "
                    f"MIN or MAX of one party's expression is exact up to {MAX_EXACT:,} "
                    "values), so the comparison could differ from the data's",
                    "select the quantiles themselves (each within one bucket) and compare "
                    f"them yourself, or compare a MIN/MAX of one party's column whose "
                    f"bounds hold at most {MAX_EXACT:,} values at its digits")

    def _exact_possible(self, out: Output) -> bool:
        """Whether MIN/MAX ``out`` can have one bucket per value: its expression reads one
        party's columns and its bounds hold at most ``MAX_EXACT`` values at its digits."""
        assert out.bounds is not None and out.expr is not None
        parties = {self.scope.resolve(c).party for c in out.expr.find_all(exp.Column)}
        return len(parties) <= 1 and exact_points(out.bounds, out.decimals) <= MAX_EXACT

    def _check_post(self, node: exp.Expr, clause: str) -> None:
        for n in node.walk():
            if is_aggregate(n):
                continue
            if any(isinstance(a, exp.AggFunc | exp.Filter) for a in ancestors(n, node)):
                continue
            if isinstance(n, exp.AggFunc | exp.Filter) or (
                    isinstance(n, exp.IgnoreNulls) and isinstance(n.this, exp.AnyValue)):
                continue
            if not isinstance(n, (*functions.POST_EXPRESSIONS, *functions.POST_CONDITIONS,
                                  exp.Column, exp.Identifier)):
                raise UnsupportedError(
                    f"{n.sql(dialect='duckdb')} is not supported in an expression over "
                    f"released values ({clause})",
                    "use aggregates, literals, + - * /, ROUND, ABS, FLOOR, CEIL, LEAST, "
                    "GREATEST, COALESCE, NULLIF, comparisons, AND/OR/NOT and CASE WHEN")

    def over_outputs(self, node: exp.Expression, clause: str) -> exp.Expression:
        """Rewrite a HAVING / ORDER BY expression into one over output names only."""
        if clause == "HAVING":  # which groups are kept must not be decided by a bucketing
            self._check_decided(node, clause)
        names = {o.name.lower(): o.name for o in self.visible}

        def refer(n: exp.Expr) -> exp.Expr:
            group = self._group_aggregated(n)
            if group is not None:
                return self._group_value(n, group)
            if _boolean_extreme(n):
                return self._boolean(n)
            if is_aggregate(n):
                return self.aggregate_ref(n)
            if isinstance(n, exp.Column):
                if not n.table and n.name.lower() in names:
                    return exp.column(names[n.name.lower()])
                col = self.scope.resolve(n)
                found = self.signatures.get(("group", col.expr().sql(dialect="duckdb")))
                if found is None:
                    raise UnsupportedError(
                        f"{clause} term {n.sql(dialect='duckdb')} is not a SELECT output",
                        f"{clause} acts on released values: add it to SELECT",
                    )
                return exp.column(found)
            return n

        for n in node.walk():
            if is_aggregate(n) or any(is_aggregate(a) for a in ancestors(n, node)):
                continue
            if not isinstance(n, (*functions.POST_EXPRESSIONS, exp.Column, exp.Identifier,
                                  exp.In, exp.Between, exp.And, exp.Or, exp.Not, exp.Is,
                                  exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)):
                raise UnsupportedError(f"{n.sql(dialect='duckdb')} is not supported in "
                                       f"{clause}",
                                       "use outputs, literals, comparisons and arithmetic")
        return node.copy().transform(refer)


def _boolean_extreme(node: exp.Expr) -> bool:
    """Whether ``node`` is MIN or MAX (with FILTER too) of a condition."""
    inner = node.this if isinstance(node, exp.Filter) else node
    return isinstance(inner, exp.Min | exp.Max) and not inner.expressions and \
        functions.is_condition(inner.this)


#: Aggregates that, of a group's own key, are that key (SUM: times the count).
_OF_GROUP = (exp.Max, exp.Min, exp.AnyValue, exp.Avg, exp.Sum)


def _numeric(group: BoundGroup) -> bool:
    """Whether a group key is a number: its public values, else its column's type."""
    if group.domain is not None:
        values = [v for v in group.domain if v is not None]
        return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                    for v in values)
    policy = group.policy
    kind = (policy.type or "").upper() if policy is not None else ""
    return kind.startswith(("TINYINT", "SMALLINT", "INT", "BIGINT", "HUGEINT", "UTINYINT",
                            "USMALLINT", "UINTEGER", "UBIGINT", "DECIMAL", "DOUBLE", "FLOAT",
                            "REAL", "NUMERIC"))


def ancestors(node: exp.Expr, root: exp.Expr) -> list[exp.Expr]:
    """The parents of ``node`` up to and including ``root``."""
    out = []
    p = node.parent
    while p is not None and node is not root:
        out.append(p)
        if p is root:
            break
        p = p.parent
    return out


def bind_order_by(select: exp.Select, binder: Outputs
                   ) -> tuple[tuple[exp.Expression, bool], ...]:
    """ORDER BY terms over output names (a position ``ORDER BY 2`` names an output too)."""
    order = select.args.get("order")
    if order is None:
        return ()
    visible = binder.visible
    terms: list[tuple[exp.Expression, bool]] = []
    for item in order.expressions:
        this = item.this if isinstance(item, exp.Ordered) else item
        desc = bool(item.args.get("desc")) if isinstance(item, exp.Ordered) else False
        if isinstance(this, exp.Literal) and not this.is_string:
            if not this.is_int or not 1 <= int(this.this) <= len(visible):
                raise UnsupportedError(
                    f"ORDER BY {this.sql()} is not an output position (1..{len(visible)})",
                    "order by an output name or its position in SELECT",
                )
            term: exp.Expression = exp.column(visible[int(this.this) - 1].name)
        else:
            term = binder.over_outputs(this, "ORDER BY")
        if isinstance(item, exp.Ordered) and item.args.get("nulls_first"):
            # NULLS FIRST (DuckDB's default is NULLS LAST either way): the NULL rows first
            nulls = exp.Is(this=exp.Paren(this=term.copy()), expression=exp.Null())
            terms.append((exp.Case(ifs=[exp.If(this=nulls, true=exp.Literal.number(0))],
                                   default=exp.Literal.number(1)), False))
        terms.append((term, desc))
    return tuple(terms)


def bind_limit(select: exp.Select) -> int | None:
    """LIMIT n with a non-negative integer literal."""
    limit = select.args.get("limit")
    return None if limit is None else checks.limit_value(limit)


def exact_points(bounds: tuple[float, float], decimals: int) -> int:
    """The number of values ``bounds`` hold at ``decimals`` digits (at most 6, as every
    histogram's).

    >>> exact_points((-100, 100), 2), exact_points((0, 10000), 0)
    (20001, 10001)
    """
    return int(round((bounds[1] - bounds[0]) * 10.0 ** min(decimals, 6))) + 1
