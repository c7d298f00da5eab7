"""The types of any row-level expression (``TypeChecker``'s part for CASE,
COALESCE, text and date functions, casts and literals)."""

from __future__ import annotations

import math
from typing import Any

from sqlglot import exp

from veilql.engine.sql.fixedpoint import (
    _as_decimal,
    _decimal_result,
    _join_ints,
    _literal_ints,
    _Num,
    _smallest_int,
)
from veilql.engine.sql.sqltypes import (
    _TEXT_FUNCTIONS,
    MAX_MAGNITUDE,
    SqlType,
    _check_unit,
    _conditions,
    _date_literal,
    _has_interval,
    _int_arguments,
    _int_range,
    _interval_literal,
    _literal_value,
    _results,
    _text_arguments,
    literal_type,
)
from veilql.engine.sql.syntax import short, unparen
from veilql.errors import UnsupportedError


class ExpressionTypes:
    """Types of row-level expressions (a part of ``TypeChecker``)."""

    bound: Any

    # -- types of any row-level expression

    def expr_type(self, node: exp.Expr) -> SqlType:
        """The type of an allowed row-level expression; its arguments are checked on the way."""
        node = unparen(node)
        if isinstance(node, exp.Column):
            return self.column(node)
        if isinstance(node, exp.Literal | exp.Boolean):
            return literal_type(node)
        if isinstance(node, exp.Null):
            return SqlType(None, "NULL")
        if isinstance(node, exp.Cast):
            return _date_literal(node)
        if isinstance(node, exp.Neg) and isinstance(unparen(node.this), exp.Literal):
            t = literal_type(unparen(node.this))  # type: ignore[arg-type]
            if t.kind != "num":
                raise UnsupportedError(f"{short(node)} negates a string",
                                       "negate numbers only")
            return t
        if isinstance(node, exp.And | exp.Or | exp.Not | exp.EQ | exp.NEQ | exp.LT | exp.LTE
                      | exp.GT | exp.GTE | exp.Between | exp.In | exp.Like | exp.ILike
                      | exp.Is):
            self.predicate(node)
            return SqlType("bool", "BOOLEAN")
        if isinstance(node, _TEXT_FUNCTIONS):
            for arg in _text_arguments(node):
                self._text_argument(node, arg)
            length = node.args.get("length") if isinstance(node, exp.Substring) else None
            if length is not None and isinstance(unparen(length), exp.Neg):
                raise UnsupportedError(f"{short(node)}: a negative length fails in some "
                                       "engines", "give SUBSTRING a length >= 0")
            for arg in _int_arguments(node):
                lit = unparen(arg)
                if not (isinstance(lit, exp.Literal) and not lit.is_string and lit.is_int) \
                        and not (isinstance(lit, exp.Neg) and isinstance(
                            unparen(lit.this), exp.Literal)):
                    raise UnsupportedError(
                        f"{short(node)}: positions and lengths must be integers written in "
                        "the query", "write e.g. SUBSTRING(x, 1, 3)")
            return SqlType("str", "VARCHAR")
        if isinstance(node, exp.Concat | exp.DPipe):
            for arg in node.expressions if isinstance(node, exp.Concat) else [
                    node.this, node.expression]:
                t = self.expr_type(arg)
                if t.kind not in ("str", None):
                    raise UnsupportedError(f"{self.describe(arg, t)} is not text, in "
                                           f"{short(node)}", "concatenate text only")
            return SqlType("str", "VARCHAR")
        if isinstance(node, exp.TimestampTrunc | exp.DateTrunc):
            self._date_argument(node, node.this)
            _check_unit(node, node.args.get("unit"))
            return SqlType("date", "TIMESTAMP")
        if isinstance(node, exp.Add | exp.Sub) and _has_interval(node):
            date, interval = (node.expression, node.this) if isinstance(
                unparen(node.this), exp.Interval) else (node.this, node.expression)
            if isinstance(node, exp.Sub) and isinstance(unparen(node.this), exp.Interval):
                raise UnsupportedError(f"{short(node)} subtracts a date from an interval",
                                       "write date - INTERVAL ...")
            _interval_literal(unparen(interval))  # type: ignore[arg-type]
            self._date_argument(node, date)
            return SqlType("date", "TIMESTAMP")
        if isinstance(node, exp.Case | exp.If | exp.Coalesce | exp.Nullif):
            for cond in _conditions(node):
                self.predicate(cond)
            results = [r for r in _results(node) if not isinstance(unparen(r), exp.Null)]
            types = [self.expr_type(r) for r in results]
            kinds = {t.kind for t in types} - {None}
            if kinds <= {"num"} and results:
                self.numeric(node)
                return SqlType("num", "number")
            if len(kinds) > 1:
                raise UnsupportedError(
                    f"the results of {short(node)} are of different types "
                    f"({', '.join(sorted(str(k) for k in kinds))})",
                    "give every branch the same type")
            return types[0] if types and kinds else SqlType(None, "unknown type")
        self.numeric(node)
        return SqlType("num", "number")

    def _numeric_column(self, col: exp.Column) -> _Num:
        t = self.column(col)
        policy = self._policy(col)
        if t.kind not in ("num", None):
            raise UnsupportedError(
                f"{self.describe(col, t)} cannot be used in arithmetic",
                "arithmetic takes numeric value columns and numbers"
                + ("; compare a boolean column with TRUE or FALSE" if t.kind == "bool" else ""),
            )
        bounds = policy.bounds if policy is not None else None
        lo, hi = (float(bounds[0]), float(bounds[1])) if bounds else (-math.inf, math.inf)
        return _Num(lo, hi, ints=t.ints, dec=t.dec, flt=t.flt,
                    known=t.kind == "num" and t.exact)

    def _combine(self, op: type, a: _Num, b: _Num) -> _Num:
        if op is exp.Add:
            lo, hi = a.lo + b.lo, a.hi + b.hi
        elif op is exp.Sub:
            lo, hi = a.lo - b.hi, a.hi - b.lo
        else:
            products = [x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)
                        if not (math.isinf(x) and y == 0) and not (math.isinf(y) and x == 0)]
            lo, hi = (min(products), max(products)) if products else (0.0, 0.0)
        if a.flt or b.flt:
            return _Num(lo, hi, flt=True)
        if not (a.known and b.known):
            return _Num(lo, hi, known=False)
        if a.dec is not None or b.dec is not None:
            return _Num(lo, hi, dec=_decimal_result(op, _as_decimal(a), _as_decimal(b)))
        if a.lit and b.lit:  # folded in the type of the wider literal, INTEGER at least
            return _Num(lo, hi, ints=_join_ints(_literal_ints(a), _literal_ints(b)), lit=True)
        if a.lit or b.lit:
            column, literal = (b, a) if a.lit else (a, b)
            assert column.ints is not None
            r = column.ints
            if not (r[0] <= literal.lo and literal.hi <= r[1]):
                own = _smallest_int(literal.lo, literal.hi) or _int_range(128, True)
                r = _join_ints(r, own)
            return _Num(lo, hi, ints=r)
        assert a.ints is not None and b.ints is not None
        return _Num(lo, hi, ints=_join_ints(a.ints, b.ints))

    def _division(self, node: exp.Div) -> _Num:
        divisor = unparen(node.expression)
        sign = 1.0
        while isinstance(divisor, exp.Neg):
            sign, divisor = -sign, unparen(divisor.this)
        if not (isinstance(divisor, exp.Literal) and not divisor.is_string):
            d = self.numeric(node.expression)
            if d.lo > 0 or d.hi < 0:  # the declared bounds exclude 0: the party clamps it
                a = self.numeric(node.this)
                ends = [x / y for x in (a.lo, a.hi) for y in (d.lo, d.hi)
                        if not (math.isinf(x) and math.isinf(y))]
                return self._checked(node, _Num(min(ends), max(ends), flt=True))
            within = (f" (its declared bounds [{d.lo:.6g}, {d.hi:.6g}] include 0)"
                      if math.isfinite(d.lo) and math.isfinite(d.hi) else "")
            raise UnsupportedError(
                f"division by {short(node.expression)} is not supported: a party's engine "
                f"fails on a row where the divisor is 0{within}",
                "declare bounds that exclude 0 for the divisor's columns (e.g. [1, 10]), "
                "divide by a number written in the query (x / 12), or multiply out: "
                "a > b * 2 rather than a / b > 2",
            )
        literal_type(divisor)
        d = sign * _literal_value(divisor)
        if d == 0:
            raise UnsupportedError(f"{short(node)} divides by zero",
                                   "divide by a non-zero number")
        a = self.numeric(node.this)
        ends = [a.lo / d, a.hi / d]
        return self._checked(node, _Num(min(ends), max(ends), flt=True))

    def _checked(self, node: exp.Expr, n: _Num) -> _Num:
        """Refuse ``n`` when some value within the declared bounds overflows its type."""
        if math.isnan(n.lo) or math.isnan(n.hi) or n.magnitude > MAX_MAGNITUDE:
            reach = "has no bounds" if math.isinf(n.magnitude) or math.isnan(n.lo) else \
                f"can reach {n.magnitude:.3g}"
            raise UnsupportedError(
                f"{short(node)} {reach} within the columns' declared bounds (at most "
                "1e36): a party's engine could overflow on some rows",
                "use smaller factors, or aggregate the parts separately",
            )
        if n.ints is not None and not (n.ints[0] <= n.lo and n.hi <= n.ints[1]):
            raise UnsupportedError(
                f"{short(node)} can reach [{n.lo:.6g}, {n.hi:.6g}] within the columns' "
                f"declared bounds, beyond the integer type it is computed in "
                f"([{n.ints[0]}, {n.ints[1]}]): a party's engine would fail on some rows",
                "compute in floating point by writing a factor with an exponent (e.g. 3e0 "
                "instead of 3), or use smaller factors",
            )
        if n.dec is not None:
            width, scale = n.dec
            if scale > 38 or n.magnitude >= 10.0 ** (width - scale):
                raise UnsupportedError(
                    f"{short(node)} can reach {n.magnitude:.6g} within the columns' declared "
                    f"bounds, beyond the DECIMAL({width},{scale}) it is computed in: a party's "
                    "engine would fail on some rows",
                    "compute in floating point by writing a factor with an exponent (e.g. "
                    "2e0 instead of 2), or use smaller factors",
                )
        return n

