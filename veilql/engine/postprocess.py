"""Expressions over released values, computed by the analyst, with their error bars.

``SELECT SUM(a) / SUM(b)``, ``100.0 * COUNT(*) / 5``, ``ROUND(AVG(x), 1)``, ``SUM(x) -
SUM(y)`` and literals beside aggregates release the aggregates they read (hidden when they
are not selected themselves) and compute the expression afterwards: post-processing of
noisy values, which costs no privacy. The expression takes what ``sql.functions
.POST_EXPRESSIONS`` lists, with SQL's rules: NULL in, NULL out; a division by zero is
NULL (so is an AVG whose released count is not positive). Comparisons of released values
(``MAX(a.x) > MAX(b.y)``), AND/OR/NOT (three-valued), IS [NOT] NULL, BETWEEN and CASE WHEN
are computed the same way; a condition has no error bar (its value is not a number).

Error bar (``interval``): interval arithmetic over the components. Each of the k noisy
aggregates the expression reads (an AVG is two: its sum and its count) gets an interval at
level ``0.95 ** (1 / k)``; their noises are independent, so all k hold at once with
probability at least 95%, and then the true value of the expression lies in the interval
interval arithmetic gives over those boxes. The released half-width is the larger distance
from the released value to an end of that interval. It is conservative (the delta method
would be tighter, but only approximately right for small counts, and wrong near a zero
denominator, where this interval becomes unbounded and the error bar is reported as
None).

>>> import sqlglot
>>> node = sqlglot.parse_one("ROUND(100.0 * a / b, 1)")
>>> evaluate(node, {"a": 1, "b": 3})
33.3
>>> interval(node, {"a": (0.0, 2.0), "b": (2.0, 4.0)})
(0.0, 100.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from sqlglot import exp

Box = tuple[float, float]
_INF = math.inf


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _literal(node: exp.Literal) -> Any:
    if node.is_string:
        return node.this
    text = node.this.replace("_", "")
    try:
        return int(text)
    except ValueError:
        return float(text)


def sql_round(x: float, digits: int = 0) -> float:
    """SQL's ROUND: half away from zero.

    >>> sql_round(2.5), sql_round(-2.5), sql_round(2.345, 2)
    (3.0, -3.0, 2.35)
    """
    if not math.isfinite(x):
        return x
    scale = 10.0**digits
    return math.copysign(math.floor(abs(x) * scale + 0.5 + 1e-9) / scale, x)


def _digits(node: exp.Expr) -> int:
    d = node.args.get("decimals")
    if d is None:
        return 0
    d = _unparen(d)
    sign = 1
    while isinstance(d, exp.Neg):
        sign, d = -sign, _unparen(d.this)
    return sign * int(d.this) if isinstance(d, exp.Literal) else 0


def evaluate(node: exp.Expr, values: Mapping[str, Any]) -> Any:
    """The value of ``node`` with each output reference replaced by ``values[name]``."""
    node = _unparen(node)
    if isinstance(node, exp.Column):
        return values[node.name]
    if isinstance(node, exp.Literal):
        return _literal(node)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Neg):
        v = evaluate(node.this, values)
        return None if v is None else -v
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        a, b = evaluate(node.this, values), evaluate(node.expression, values)
        if a is None or b is None:
            return None
        if isinstance(node, exp.Add):
            return a + b
        if isinstance(node, exp.Sub):
            return a - b
        if isinstance(node, exp.Mul):
            return a * b
        return None if b == 0 else a / b
    if isinstance(node, exp.Round | exp.Floor | exp.Ceil | exp.Abs):
        v = evaluate(node.this, values)
        if v is None:
            return None
        if isinstance(node, exp.Abs):
            return abs(v)
        if isinstance(node, exp.Floor):
            return math.floor(v)
        if isinstance(node, exp.Ceil):
            return math.ceil(v)
        digits = _digits(node)
        out = sql_round(float(v), digits)
        return int(out) if isinstance(v, int) and digits <= 0 else out
    if isinstance(node, exp.Least | exp.Greatest):
        items = [evaluate(a, values) for a in [node.this, *node.expressions]]
        items = [v for v in items if v is not None]
        if not items:
            return None
        return min(items) if isinstance(node, exp.Least) else max(items)
    if isinstance(node, exp.Coalesce):
        for a in [node.this, *node.expressions]:
            v = evaluate(a, values)
            if v is not None:
                return v
        return None
    if isinstance(node, exp.Nullif):
        a, b = evaluate(node.this, values), evaluate(node.expression, values)
        return None if a is not None and b is not None and a == b else a
    if isinstance(node, tuple(_COMPARE)):
        a, b = evaluate(node.this, values), evaluate(node.expression, values)
        return None if a is None or b is None else _COMPARE[type(node)](a, b)
    if isinstance(node, exp.And | exp.Or | exp.Not):
        return _logic(node, values)
    if isinstance(node, exp.Is):  # IS NULL, IS TRUE, IS FALSE (NOT is its parent)
        v = evaluate(node.this, values)
        other = _unparen(node.expression)
        return v is None if not isinstance(other, exp.Boolean) else v is other.this
    if isinstance(node, exp.Between):
        v = evaluate(node.this, values)
        lo, hi = evaluate(node.args["low"], values), evaluate(node.args["high"], values)
        return _and(None if v is None or lo is None else v >= lo,
                    None if v is None or hi is None else v <= hi)
    if isinstance(node, exp.If):  # IF(c, a, b)
        branch = node.args["true"] if evaluate(node.this, values) is True else node.args.get(
            "false")
        return None if branch is None else evaluate(branch, values)
    if isinstance(node, exp.Case):
        for branch in node.args.get("ifs") or []:
            if evaluate(branch.this, values) is True:
                return evaluate(branch.args["true"], values)
        default = node.args.get("default")
        return None if default is None else evaluate(default, values)
    raise ValueError(f"cannot evaluate {node.sql()}")  # the binder allows nothing else


_COMPARE: dict[type[exp.Expr], Callable[[Any, Any], bool]] = {
    exp.EQ: lambda a, b: a == b, exp.NEQ: lambda a, b: a != b, exp.LT: lambda a, b: a < b,
    exp.LTE: lambda a, b: a <= b, exp.GT: lambda a, b: a > b, exp.GTE: lambda a, b: a >= b}


def _logic(node: exp.Expr, values: Mapping[str, Any]) -> bool | None:
    """AND, OR and NOT with SQL's three-valued logic (NULL: unknown)."""
    def truth(n: exp.Expr) -> bool | None:
        n = _unparen(n)
        if isinstance(n, exp.Boolean):
            return n.this
        v = evaluate(n, values)
        return None if v is None else bool(v)

    if isinstance(node, exp.Not):
        v = truth(node.this)
        return None if v is None else not v
    a, b = truth(node.this), truth(node.expression)
    if isinstance(node, exp.And):
        return _and(a, b)
    return True if a is True or b is True else None if a is None or b is None else False


def _and(a: bool | None, b: bool | None) -> bool | None:
    return False if a is False or b is False else None if a is None or b is None else True


def interval(node: exp.Expr, boxes: Mapping[str, Box | None]) -> Box | None:
    """An interval holding ``node`` whenever each reference lies in its box (None: a box
    is unknown, e.g. an AVG whose count's interval reaches 0)."""
    node = _unparen(node)
    if isinstance(node, exp.Column):
        return boxes.get(node.name)
    if isinstance(node, exp.Literal):
        v = _literal(node)
        return (float(v), float(v)) if not isinstance(v, str) else None
    if isinstance(node, exp.Boolean | exp.Null):
        return None
    if isinstance(node, exp.Neg):
        a = interval(node.this, boxes)
        return None if a is None else (-a[1], -a[0])
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        a, b = interval(node.this, boxes), interval(node.expression, boxes)
        if a is None or b is None:
            return None
        if isinstance(node, exp.Add):
            return a[0] + b[0], a[1] + b[1]
        if isinstance(node, exp.Sub):
            return a[0] - b[1], a[1] - b[0]
        if isinstance(node, exp.Div):
            if b[0] <= 0 <= b[1]:
                return (-_INF, _INF)
            b = (1 / b[1], 1 / b[0])
        ends = [x * y for x in a for y in b if not (math.isinf(x) or math.isinf(y))
                or (x != 0 and y != 0)]
        return (min(ends), max(ends)) if ends else (-_INF, _INF)
    if isinstance(node, exp.Round | exp.Floor | exp.Ceil):
        a = interval(node.this, boxes)
        if a is None:
            return None
        f: Callable[[float], float]
        if isinstance(node, exp.Floor):
            f = math.floor  # type: ignore[assignment]
        elif isinstance(node, exp.Ceil):
            f = math.ceil  # type: ignore[assignment]
        else:
            digits = _digits(node)
            def f(x: float) -> float:
                return sql_round(x, digits)
        return tuple(f(x) if math.isfinite(x) else x for x in a)  # type: ignore[return-value]
    if isinstance(node, exp.Abs):
        a = interval(node.this, boxes)
        if a is None:
            return None
        lo = 0.0 if a[0] <= 0 <= a[1] else min(abs(a[0]), abs(a[1]))
        return lo, max(abs(a[0]), abs(a[1]))
    if isinstance(node, exp.Least | exp.Greatest | exp.Coalesce | exp.Nullif):
        items = [interval(a, boxes) for a in [node.this, *node.expressions]]
        if isinstance(node, exp.Nullif):
            return items[0]
        known = [b for b in items if b is not None]
        if not known:
            return None
        if isinstance(node, exp.Coalesce):
            return min(b[0] for b in known), max(b[1] for b in known)
        pick = min if isinstance(node, exp.Least) else max
        return pick(b[0] for b in known), pick(b[1] for b in known)
    return None


def half_width(value: Any, box: Box | None) -> float | None:
    """The error bar of a computed value: its larger distance to an end of ``box``.

    >>> half_width(3.0, (1.0, 4.0)), half_width(3.0, (0.0, math.inf))
    (2.0, None)
    """
    if value is None or box is None or isinstance(value, str | bool):
        return None
    h = max(float(value) - box[0], box[1] - float(value), 0.0)
    return h if math.isfinite(h) else None


def references(node: exp.Expr) -> list[str]:
    """The output names ``node`` reads, in order, each once."""
    return list(dict.fromkeys(c.name for c in node.find_all(exp.Column)))


def level(components: int) -> float:
    """alpha of each of ``components`` independent intervals whose joint level is 95%.

    >>> round(level(2), 6)
    0.025321
    """
    return 1.0 - 0.95 ** (1.0 / max(components, 1))
