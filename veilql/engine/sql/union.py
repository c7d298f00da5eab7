"""UNION ALL of several parties' tables in FROM: one single-party query per branch.

An aggregate over ``(SELECT ... FROM p.t UNION ALL SELECT ... FROM q.u) AS u`` needs no
join: it is the sum, cell by cell, of each branch's own aggregate. This module checks the
shape and writes, per branch, the outer query over that branch's table alone: every
reference to a union column replaced by the branch's expression at its position, the outer
WHERE added to the branch's own, the GROUP BY, HAVING and ORDER BY rewritten alike, and
every SELECT item named explicitly (the union's names, from the first branch), so that all
branches release the same outputs. ``rewrite/union.py`` plans each branch as a one-party
query (bounding, clamping, local SQL) and adds them on shares.

Accepted: FROM is exactly one derived table whose body is two or more ``SELECT cols FROM
party.table [WHERE ...]`` joined by UNION ALL, the same number of columns in each; the
outer query has COUNT(*), COUNT(col), SUM, AVG, VAR/STDDEV (their moments add up), and
MIN, MAX, MEDIAN and quantiles over union columns (or row-level expressions of them), an
optional WHERE and GROUP BY over union columns. Everything else is refused with a
``UnsupportedError`` naming the construct.

A quantile's histogram adds up over the branches only if every branch uses the same
buckets: ``union_branches(parsed, widen)`` writes each quantile's argument as ``CASE WHEN
FALSE THEN lo WHEN FALSE THEN hi ELSE arg END`` (the same value, whose declared bounds are
the common ``[lo, hi]``; ``rewrite/union.py`` chooses it and checks the buckets agree).

>>> from veilql.engine.sql.parse import parse
>>> q = parse("SELECT COUNT(*) AS n, SUM(x) FROM (SELECT amount AS x FROM bank.loans "
...           "UNION ALL SELECT premium FROM insurer.policies WHERE open_claim = 1) AS u "
...           "WHERE x > 10")
>>> [b.sql for b in union_branches(q)]  # doctest: +NORMALIZE_WHITESPACE
['SELECT COUNT(*) AS n, SUM(amount) AS sum_x FROM bank.loans WHERE amount > 10',
 'SELECT COUNT(*) AS n, SUM(premium) AS sum_x FROM insurer.policies
  WHERE (open_claim = 1) AND (premium > 10)']
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from veilql.engine.sql.aggregates import _statistic
from veilql.engine.sql.functions import is_condition
from veilql.engine.sql.groups import unique_name
from veilql.engine.sql.parse import ParsedQuery
from veilql.errors import UnsupportedError

HINT = ("a UNION ALL in FROM is supported as (SELECT cols FROM party.table [WHERE ...] "
        "UNION ALL SELECT ...) AS u, with COUNT, SUM, AVG, VAR/STDDEV, MIN, MAX, MEDIAN and "
        "quantiles over its columns, WHERE and GROUP BY on them")
_ALLOWED_AGGREGATES = (exp.Count, exp.Sum, exp.Avg)


@dataclass(frozen=True)
class Branch:
    """One branch of the union: its party, its table, and the outer query over it alone."""

    party: str
    table: str
    sql: str


def union_body(parsed: ParsedQuery) -> exp.Union | None:
    """The UNION of FROM's derived table, or None when the query has none there."""
    tree = parsed.tree
    if not isinstance(tree, exp.Select):
        return None
    from_ = tree.args.get("from_")
    if from_ is None or not isinstance(from_.this, exp.Subquery):
        return None
    body = from_.this.this
    return body if isinstance(body, exp.Union) else None


def _flatten(node: exp.Expression) -> list[exp.Expression]:
    """The branches of a chain of UNION ALL, in order; refuses UNION, INTERSECT, EXCEPT."""
    if isinstance(node, exp.Subquery):
        return _flatten(node.this)
    if isinstance(node, exp.Union):
        if node.args.get("distinct"):
            raise UnsupportedError("UNION (without ALL) in FROM is not supported: removing "
                                   "duplicate rows across parties is not a sum", HINT)
        for arg in ("order", "limit", "offset"):
            if node.args.get(arg):
                raise UnsupportedError(f"{arg.upper()} on a UNION ALL in FROM is not "
                                       "supported", HINT)
        return _flatten(node.this) + _flatten(node.expression)
    if isinstance(node, exp.Intersect | exp.Except):
        raise UnsupportedError(f"{node.key.upper()} in FROM is not supported", HINT)
    return [node]


def _check_branch(node: exp.Expression, i: int) -> exp.Select:
    """A branch is ``SELECT cols FROM party.table [WHERE ...]``: nothing else."""
    what = f"branch {i + 1} of the UNION ALL"
    if not isinstance(node, exp.Select):
        raise UnsupportedError(f"{what} is {node.key.upper()}, not a SELECT", HINT)
    if node.args.get("with_") is not None:
        raise UnsupportedError(f"WITH inside {what} is not supported", HINT)
    for arg, name in (("group", "GROUP BY"), ("having", "HAVING"), ("order", "ORDER BY"),
                      ("limit", "LIMIT"), ("offset", "OFFSET"), ("qualify", "QUALIFY"),
                      ("joins", "JOIN"), ("distinct", "SELECT DISTINCT")):
        if node.args.get(arg):
            raise UnsupportedError(f"{name} inside {what} is not supported: each branch reads "
                                   "one table of one party", HINT)
    from_ = node.args.get("from_")
    if from_ is None or not isinstance(from_.this, exp.Table) or not from_.this.db:
        raise UnsupportedError(f"{what} must read one table party.table", HINT)
    for item in node.expressions:
        if isinstance(item, exp.Star) or item.find(exp.Star) is not None:
            raise UnsupportedError(f"SELECT * inside {what} is not supported: name the "
                                   "columns", HINT)
        if item.find(exp.AggFunc) is not None:
            raise UnsupportedError(f"aggregates inside {what} are not supported", HINT)
        if item.find(exp.Window) is not None or item.find(exp.Subquery) is not None:
            raise UnsupportedError(f"window functions and subqueries inside {what} are not "
                                   "supported", HINT)
    where = node.args.get("where")
    if where is not None and where.find(exp.Subquery, exp.Exists, exp.In) is not None:
        if any(isinstance(n, exp.Subquery | exp.Exists) or
               (isinstance(n, exp.In) and n.args.get("query") is not None)
               for n in where.walk()):
            raise UnsupportedError(f"subqueries in the WHERE of {what} are not supported", HINT)
    return node


def _item_name(item: exp.Expression) -> str:
    """The union column an item of the first branch names (its alias or column)."""
    if isinstance(item, exp.Alias):
        return item.alias
    if isinstance(item, exp.Column):
        return item.name
    raise UnsupportedError(f"the union column {item.sql(dialect='duckdb')} needs a name",
                           "write it with AS <name> in the first branch")


def _check_outer(tree: exp.Select) -> None:
    """The outer query: aggregates COUNT/SUM/AVG only, no JOIN, no subqueries."""
    if tree.args.get("joins"):
        raise UnsupportedError("a JOIN of a UNION ALL with another table is not supported",
                               HINT)
    if tree.args.get("with_") is not None:
        raise UnsupportedError("WITH beside a UNION ALL in FROM is not supported", HINT)
    if tree.args.get("distinct"):
        raise UnsupportedError("SELECT DISTINCT over a UNION ALL is not supported", HINT)
    union = tree.args["from_"].this
    keys = group_keys(tree)
    for node in tree.walk():
        if node is union or node.find_ancestor(exp.Subquery) is union:
            continue
        if of_group_key(node, keys, union.alias_or_name):
            continue  # MAX(g) of its own GROUP BY g: the label (outputs.py)
        if isinstance(node, exp.Subquery | exp.Exists) or (
                isinstance(node, exp.In) and node.args.get("query") is not None):
            raise UnsupportedError("subqueries beside a UNION ALL in FROM are not supported",
                                   HINT)
        if isinstance(node, exp.AggFunc) and not isinstance(node, _ALLOWED_AGGREGATES) \
                and not isinstance(node.parent, exp.WithinGroup) and _statistic(node) is None:
            raise UnsupportedError(
                f"{node.sql_name()} over a UNION ALL is not supported: only COUNT, SUM, AVG, "
                "VAR/STDDEV and quantiles (MIN, MAX, MEDIAN) add up over the branches", HINT)
        if isinstance(node, exp.Count) and isinstance(node.this, exp.Distinct):
            raise UnsupportedError(
                "COUNT(DISTINCT ...) over a UNION ALL is not supported: a person or value in "
                "two branches would count twice", HINT)
        if isinstance(node, exp.Window):
            raise UnsupportedError("window functions over a UNION ALL are not supported", HINT)


#: Aggregates that, of a group's own key, are that key (SUM: times the count).
_OF_GROUP = (exp.Max, exp.Min, exp.AnyValue, exp.Avg, exp.Sum)


def _bare(node: exp.Expression, alias: str) -> str:
    """``node``'s text with the union's alias dropped from its columns (``u.g`` is ``g``)."""
    def strip(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Column) and n.table.lower() == alias.lower():
            return exp.column(n.name)
        return n

    while isinstance(node, exp.Paren):
        node = node.this
    return node.copy().transform(strip).sql(dialect="duckdb")


def group_keys(tree: exp.Select) -> set[str]:
    """The outer GROUP BY items' texts (``_bare``), positions and aliases resolved."""
    group = tree.args.get("group")
    if group is None:
        return set()
    alias = tree.args["from_"].this.alias_or_name
    items = {(i.alias or "").lower(): i.this for i in tree.expressions
             if isinstance(i, exp.Alias)}
    out = set()
    for g in group.expressions:
        if isinstance(g, exp.Literal) and g.is_int and 1 <= int(g.this) <= len(
                tree.expressions):
            item = tree.expressions[int(g.this) - 1]
            g = item.this if isinstance(item, exp.Alias) else item
        elif isinstance(g, exp.Column) and not g.table and g.name.lower() in items:
            g = items[g.name.lower()]
        out.add(_bare(g, alias))
    return out


def of_group_key(node: exp.Expression, keys: set[str], alias: str) -> bool:
    """Whether ``node`` is MAX/MIN/ANY_VALUE/AVG/SUM of a GROUP BY key of the outer query
    (the binder answers it from the released label, ``outputs.py``)."""
    if not isinstance(node, _OF_GROUP) or isinstance(node.parent, exp.Filter) or (
            isinstance(node, exp.Min | exp.Max) and node.expressions):
        return False
    arg = node.this
    while isinstance(arg, exp.Paren):
        arg = arg.this
    if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
        arg = arg.expressions[0]
    return _bare(arg, alias) in keys


def _default_name(node: exp.Expression) -> str:
    """The output name of an unaliased outer SELECT item, as the binder names it."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        return node.name
    if isinstance(node, exp.Count):
        arg = node.this
        return f"count_{arg.name}" if isinstance(arg, exp.Column) else "count"
    if isinstance(node, exp.Sum | exp.Avg):
        kind = "sum" if isinstance(node, exp.Sum) else "avg"
        arg = node.this
        return f"{kind}_{arg.name}" if isinstance(arg, exp.Column) else kind
    statistic = _statistic(node) if isinstance(node, exp.AggFunc | exp.WithinGroup) else None
    if statistic is not None:  # as the binder names VAR(x), MIN(x), MEDIAN(x)...
        func, _, _, arg = statistic
        while isinstance(arg, exp.Paren):
            arg = arg.this
        return f"{func}_{arg.name}" if isinstance(arg, exp.Column) else func
    if isinstance(node, exp.Func) and not isinstance(node, exp.Binary):
        return node.sql_name().lower()
    return "expr"


def quantile_arguments(tree: exp.Expression) -> list[exp.Expression]:
    """The arguments of the quantile aggregates (MIN, MAX, MEDIAN, ...) of the outer query,
    as nodes of ``tree`` (not inside the union)."""
    union = tree.args["from_"].this
    keys = group_keys(tree) if isinstance(tree, exp.Select) else set()
    out = []
    for node in tree.walk():
        if node is union or node.find_ancestor(exp.Subquery) is union:
            continue
        if isinstance(node, exp.AggFunc) and isinstance(node.parent, exp.WithinGroup):
            continue  # the WITHIN GROUP node names the argument
        if of_group_key(node, keys, union.alias_or_name):
            continue  # MAX(g) of its own group: the label, no histogram
        if isinstance(node, exp.AggFunc | exp.WithinGroup):
            statistic = _statistic(node)
            if statistic is not None and statistic[2] is not None:
                out.append(statistic[3])
    return out


def argument_key(arg: exp.Expression) -> str:
    """The text that identifies a quantile's argument (equal arguments share buckets)."""
    return arg.sql(dialect="duckdb")


def probe(parsed: ParsedQuery) -> tuple[list[str], ParsedQuery]:
    """The quantile arguments' keys, and a query ``SELECT MIN(arg) ...`` over the same
    union and WHERE: its branches' plans show each branch's own buckets for each argument."""
    tree = parsed.tree.copy()
    # a condition's buckets are {0, 1} in every branch: nothing to agree on
    args = [a for a in quantile_arguments(tree) if not is_condition(a)]
    keys = list(dict.fromkeys(argument_key(a) for a in args))
    first = {argument_key(a): a for a in reversed(args)}
    tree.set("expressions", [exp.alias_(exp.Min(this=first[k].copy()), f"p{i}")
                             for i, k in enumerate(keys)])
    for arg in ("group", "having", "order", "limit", "offset"):
        tree.set(arg, None)
    return keys, ParsedQuery(sql=parsed.sql, tree=tree)


def _widen(tree: exp.Expression, widen: dict[str, tuple[str, ...]]) -> exp.Expression:
    """A copy of ``tree`` with every quantile argument written as ``CASE WHEN FALSE THEN
    lo ... ELSE arg END``: the same value, but bounded (and bucketed) by the common range."""
    tree = tree.copy()
    for arg in quantile_arguments(tree):
        literals = widen.get(argument_key(arg))
        if literals is None or is_condition(arg):
            continue  # a condition's buckets are {0, 1} in every branch
        ifs = [exp.If(this=exp.false(), true=_number(v)) for v in literals]
        arg.replace(exp.Case(ifs=ifs, default=arg.copy()))
    return tree


def _number(text: str) -> exp.Expression:
    lit = exp.Literal.number(text.lstrip("-"))
    return exp.Neg(this=lit) if text.startswith("-") else lit


def union_branches(parsed: ParsedQuery,
                   widen: dict[str, tuple[str, ...]] | None = None) -> list[Branch]:
    """One single-party query per branch (see the module docstring); refuses the rest.
    ``widen``: per quantile argument (``argument_key``), the literals of its common range."""
    tree = parsed.tree if not widen else _widen(parsed.tree, widen)
    body = union_body(parsed)
    assert isinstance(tree, exp.Select) and body is not None
    _check_outer(tree)
    sub = tree.args["from_"].this
    alias = sub.alias_or_name
    if sub.args.get("alias") is not None and sub.args["alias"].columns:
        raise UnsupportedError(f"column names after the union's alias {alias} are not "
                               "supported", "name the columns in the first branch")
    branches = [_check_branch(b, i) for i, b in enumerate(_flatten(body))]
    names = [_item_name(e) for e in branches[0].expressions]
    if len({n.lower() for n in names}) != len(names):
        raise UnsupportedError("two columns of the union have the same name",
                               "give each column of the first branch its own name")
    for i, b in enumerate(branches):
        if len(b.expressions) != len(names):
            raise UnsupportedError(f"branch {i + 1} of the UNION ALL has {len(b.expressions)} "
                                   f"columns, the first {len(names)}", HINT)
    # Explicit output names, the same in every branch.
    taken: set[str] = set()
    named: list[tuple[str, exp.Expression]] = []
    for item in tree.expressions:
        node = item.this if isinstance(item, exp.Alias) else item
        name = item.alias if isinstance(item, exp.Alias) else unique_name(
            _default_name(node), taken)
        taken.add(name.lower())
        named.append((name, node))
    out = []
    for b in branches:
        table = b.args["from_"].this
        values = {n.lower(): (e.this if isinstance(e, exp.Alias) else e)
                  for n, e in zip(names, b.expressions, strict=True)}

        def substitute(node: exp.Expression, values: dict = values,
                       keep: frozenset = frozenset()) -> exp.Expression:
            if not isinstance(node, exp.Column):
                return node
            if not node.table and node.name.lower() in keep:
                return node  # HAVING / ORDER BY may name an output
            if node.table and node.table.lower() != alias.lower():
                raise UnsupportedError(f"column {node.sql(dialect='duckdb')} is not a column "
                                       f"of the union {alias}", HINT)
            found = values.get(node.name.lower())
            if found is None:
                raise UnsupportedError(f"{node.name} is not a column of the union {alias}",
                                       "name a column of the first branch")
            copy = found.copy()
            return copy if isinstance(copy, exp.Column | exp.Literal) else exp.Paren(this=copy)

        q = exp.Select()
        q.set("expressions", [exp.alias_(node.copy().transform(substitute), name, quoted=None)
                              for name, node in named])
        q.set("from_", exp.From(this=table.copy()))
        conds = []
        if b.args.get("where") is not None:
            conds.append(b.args["where"].this.copy())
        if tree.args.get("where") is not None:
            conds.append(tree.args["where"].this.copy().transform(substitute))
        if conds:
            cond = conds[0] if len(conds) == 1 else exp.and_(*(exp.Paren(this=c) for c in conds))
            q.set("where", exp.Where(this=cond))
        outputs = frozenset(taken)
        for arg in ("group", "having", "order", "limit"):
            part = tree.args.get(arg)
            if part is not None:
                keep = outputs if arg in ("having", "order") else frozenset()
                q.set(arg, part.copy().transform(
                    lambda n, values=values, keep=keep: substitute(n, values, keep)))
        out.append(Branch(table.db, table.name, q.sql(dialect="duckdb")))
    return out
