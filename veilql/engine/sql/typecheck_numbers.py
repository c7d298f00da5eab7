"""Numbers at the parties and at the analyst (``TypeChecker``'s arithmetic):
the interval and type of every arithmetic expression and numeric
function a party's engine runs, refusing what could fail or overflow on
a row within the declared bounds."""

from __future__ import annotations

import math
from typing import Any

from sqlglot import exp

from veilql.engine.sql import functions
from veilql.engine.sql.fixedpoint import _hull, _Num, _sql_round, _square
from veilql.engine.sql.sqltypes import (
    _DATE_PARTS,
    DATE_PART_RANGES,
    _check_unit,
    _conditions,
    _int_range,
    _literal_value,
    _results,
    date_part,
    literal_type,
)
from veilql.engine.sql.syntax import short, unparen
from veilql.errors import UnsupportedError


class NumberChecks:
    """Arithmetic and numeric functions (a part of ``TypeChecker``)."""

    bound: Any

    # -- numbers at the parties

    def numeric(self, node: exp.Expr) -> _Num:
        """The interval and type of arithmetic a party's engine runs; refuse what can fail.

        Recursive over the tree; the parser's limits keep it shallow.
        """
        node = unparen(node)
        if isinstance(node, exp.Column):
            return self._numeric_column(node)
        if isinstance(node, exp.Boolean):
            raise UnsupportedError(f"{short(node)} cannot be used in arithmetic",
                                   "arithmetic takes value columns and numbers")
        if isinstance(node, exp.Literal):
            t = literal_type(node)
            if t.kind != "num":
                raise UnsupportedError(
                    f"the string {short(node)} cannot be used in arithmetic",
                    "arithmetic takes value columns and numbers; write numbers without quotes",
                )
            v = _literal_value(node)
            integer = t.dec is None and not t.flt
            return _Num(v, v, lit=integer, dec=t.dec, flt=t.flt)
        if isinstance(node, exp.Neg):
            a = self.numeric(node.this)
            out = _Num(-a.hi, -a.lo, a.ints, a.lit, a.dec, a.flt, a.known)
            return self._checked(node, out)
        if isinstance(node, exp.Div):
            return self._division(node)
        if isinstance(node, exp.Add | exp.Sub | exp.Mul):
            a, b = self.numeric(node.this), self.numeric(node.expression)
            out = self._combine(type(node), a, b)
            if isinstance(node, exp.Mul) and unparen(node.this) == unparen(node.expression):
                out = _square(out, a)  # x * x: one value squared, never below 0
            return self._checked(node, out)
        if isinstance(node, exp.Mod):
            return self._mod(node)
        if isinstance(node, exp.Case | exp.If | exp.Coalesce | exp.Nullif):
            return self._checked(node, self._branches(node))
        fn = self._function(node)
        if fn is not None:  # a day count cannot overflow its BIGINT; arithmetic on it can
            return fn if isinstance(node, exp.DateDiff) else self._checked(node, fn)
        if isinstance(node, exp.Null):
            return _Num(0.0, 0.0, lit=True)
        raise UnsupportedError(f"{short(node)} is not supported in arithmetic",
                               "use value columns, numbers, + - * / % and the numeric "
                               "functions of docs/reference.md")

    # -- numeric functions

    def _mod(self, node: exp.Mod) -> _Num:
        """``x % k``: only by a non-zero number written in the query (engines fail on 0)."""
        k = unparen(node.expression)
        if not (isinstance(k, exp.Literal) and not k.is_string):
            raise UnsupportedError(
                f"{short(node)}: % is supported only by a number written in the query",
                "write x % 7 with a literal, non-zero divisor")
        literal_type(k)
        d = abs(_literal_value(k))
        if d == 0:
            raise UnsupportedError(f"{short(node)} divides by zero", "use a non-zero divisor")
        a = self.numeric(node.this)
        lo = 0.0 if a.lo >= 0 else max(a.lo, -d)
        hi = 0.0 if a.hi <= 0 else min(a.hi, d)
        return _Num(lo, hi, ints=a.ints, lit=a.lit, dec=a.dec, flt=a.flt, known=a.known)

    def _branches(self, node: exp.Expr) -> _Num:
        """CASE / IF / COALESCE / NULLIF as numbers: the hull of their results."""
        results = [r for r in _results(node) if not isinstance(unparen(r), exp.Null)]
        for cond in _conditions(node):
            self.predicate(cond)
        if not results:
            raise UnsupportedError(f"{short(node)} is always NULL", "give it a value")
        nums = [self.numeric(r) for r in results]
        return _hull(nums)

    def _function(self, node: exp.Expr) -> _Num | None:
        """A numeric function of the allow-list as an interval and a type, or None."""
        if isinstance(node, exp.Abs):
            a = self.numeric(node.this)
            lo = 0.0 if a.lo <= 0 <= a.hi else min(abs(a.lo), abs(a.hi))
            return _Num(lo, a.magnitude, a.ints, a.lit, a.dec, a.flt, a.known)
        if isinstance(node, exp.Sign):
            a = self.numeric(node.this)
            return _Num(-1.0 if a.lo < 0 else 0.0 if a.lo == 0 else 1.0,
                        1.0 if a.hi > 0 else 0.0 if a.hi == 0 else -1.0, ints=_int_range(8, True))
        if isinstance(node, exp.Round | exp.Floor | exp.Ceil):
            return self._rounding(node)
        if isinstance(node, exp.Sqrt):
            a = self.numeric(node.this)
            if a.lo < 0:
                raise UnsupportedError(
                    f"{short(node)}: the argument can reach {a.lo:.6g} within the declared "
                    "bounds, and a square root of a negative number fails in an engine",
                    "take the root of a value whose declared bounds are >= 0, e.g. "
                    "SQRT(GREATEST(x, 0))")
            return _Num(math.sqrt(a.lo), math.sqrt(a.hi), flt=True)
        if isinstance(node, exp.Ln | exp.Log):
            return self._log(node)
        if isinstance(node, exp.Exp):
            a = self.numeric(node.this)
            if a.hi > 80:
                raise UnsupportedError(
                    f"{short(node)}: the argument can reach {a.hi:.6g} within the declared "
                    "bounds, and EXP of it overflows (at most 80 is accepted)",
                    "narrow the argument, e.g. EXP(LEAST(x, 80))")
            return _Num(math.exp(a.lo) if math.isfinite(a.lo) else 0.0, math.exp(a.hi),
                        flt=True)
        if isinstance(node, exp.Pow):
            return self._power(node)
        if isinstance(node, exp.Least | exp.Greatest):
            nums = [self.numeric(a) for a in [node.this, *node.expressions]]
            hull = _hull(nums)
            pick = min if isinstance(node, exp.Least) else max
            return _Num(pick(n.lo for n in nums), pick(n.hi for n in nums), hull.ints,
                        hull.lit, hull.dec, hull.flt, hull.known)
        if isinstance(node, _DATE_PARTS):
            part = date_part(node)
            self._date_argument(node, node.expression if isinstance(node, exp.Extract)
                                else node.this)
            lo, hi = DATE_PART_RANGES.get(part, (-300000.0, 300000.0))
            return _Num(lo, hi, ints=_int_range(64, True))
        if isinstance(node, exp.DateDiff):
            self._date_argument(node, node.this)
            self._date_argument(node, node.expression)
            _check_unit(node, node.args.get("unit"))
            return _Num(-math.inf, math.inf, ints=_int_range(64, True))
        if isinstance(node, exp.Length):
            self._text_argument(node, node.this)
            return _Num(0.0, float(2**31 - 1), ints=_int_range(64, True))
        return None

    def _rounding(self, node: exp.Expr) -> _Num:
        """ROUND(x[, n]), FLOOR(x), CEIL(x): monotone, so the interval of the ends."""
        a = self.numeric(node.this)
        digits = 0
        arg = node.args.get("decimals") if isinstance(node, exp.Round) else None
        if isinstance(node, exp.Floor | exp.Ceil) and node.args.get("decimals") is not None:
            arg = node.args.get("decimals")
        if arg is not None:
            lit = unparen(arg)
            if not (isinstance(lit, exp.Literal) and not lit.is_string and lit.is_int):
                raise UnsupportedError(f"{short(node)}: the digits must be an integer "
                                       "written in the query", "write e.g. ROUND(x, 2)")
            digits = int(lit.this)
        if isinstance(node, exp.Floor):
            lo, hi = math.floor(a.lo), math.floor(a.hi)
        elif isinstance(node, exp.Ceil):
            lo, hi = math.ceil(a.lo), math.ceil(a.hi)
        else:
            lo, hi = _sql_round(a.lo, digits), _sql_round(a.hi, digits)
        dec = None
        if a.dec is not None:
            dec = (a.dec[0], max(0, min(a.dec[1], digits)))
        return _Num(float(lo), float(hi), a.ints, a.lit, dec, a.flt, a.known)

    def _log(self, node: exp.Expr) -> _Num:
        """LN(x), LOG(x) (base 10), LOG(b, x): x must be > 0 at every declared value."""
        base = 10.0 if isinstance(node, exp.Log) else math.e
        arg = node.this
        if isinstance(node, exp.Log) and node.expression is not None:
            b = unparen(node.this)
            if not (isinstance(b, exp.Literal) and not b.is_string):
                raise UnsupportedError(f"{short(node)}: the base must be a number written "
                                       "in the query", "write LOG(2, x) or LN(x)")
            base = _literal_value(b)
            if base <= 0 or base == 1:
                raise UnsupportedError(f"{short(node)}: base {b.this} is not a valid base",
                                       "use a base > 0 other than 1")
            arg = node.expression
        a = self.numeric(arg)
        if not a.lo > 0:
            raise UnsupportedError(
                f"{short(node)}: the argument can reach {a.lo:.6g} within the declared "
                "bounds, and the logarithm of a number <= 0 fails in an engine",
                "take the logarithm of a value whose declared bounds are > 0, e.g. "
                "LN(x + 1) for x >= 0")
        ends = [math.log(a.lo, base), math.log(a.hi, base) if math.isfinite(a.hi) else math.inf]
        return _Num(min(ends), max(ends), flt=True)

    def _power(self, node: exp.Pow) -> _Num:
        """POWER(x, k) with k a number written in the query."""
        k = unparen(node.expression)
        sign = 1.0
        while isinstance(k, exp.Neg):
            sign, k = -sign, unparen(k.this)
        if not (isinstance(k, exp.Literal) and not k.is_string):
            raise UnsupportedError(f"{short(node)}: the exponent must be a number written "
                                   "in the query", "write e.g. POWER(x, 2)")
        e = sign * _literal_value(k)
        a = self.numeric(node.this)
        if not float(e).is_integer() and a.lo < 0:
            raise UnsupportedError(
                f"{short(node)}: a fractional power of a value that can be negative "
                f"({a.lo:.6g} within the declared bounds) is not a number",
                "raise only values whose declared bounds are >= 0 to fractional powers")
        if e < 0 and a.lo <= 0 <= a.hi:
            raise UnsupportedError(
                f"{short(node)}: a negative power of a value whose declared bounds include "
                "0 divides by zero", "use a positive exponent")
        points = [a.lo, a.hi] + ([0.0] if a.lo < 0 < a.hi else [])
        try:
            values = [p**e for p in points if not (p == 0 and e < 0)]
        except OverflowError:
            values = [math.inf]
        values = [v.real if isinstance(v, complex) else v for v in values]
        return _Num(min(values), max(values), flt=True)

    def _date_argument(self, node: exp.Expr, arg: exp.Expr | None) -> None:
        """The argument of a date function must be a date or timestamp."""
        if arg is None:
            return
        t = self.expr_type(arg)
        if t.kind not in ("date", None):
            raise UnsupportedError(
                f"{self.describe(arg, t)} is not a date, in {short(node)}",
                "date functions take DATE or TIMESTAMP columns, or DATE '2024-01-31'")

    def _text_argument(self, node: exp.Expr, arg: exp.Expr | None) -> None:
        """The argument of a text function must be text."""
        if arg is None:
            return
        t = self.expr_type(arg)
        if t.kind not in ("str", None):
            raise UnsupportedError(
                f"{self.describe(arg, t)} is not text, in {short(node)}",
                "text functions take text columns and strings")


    # -- numbers at the analyst (HAVING, ORDER BY)

    def _analyst_numeric(self, node: exp.Expr) -> None:
        stack = [node]
        while stack:
            n = unparen(stack.pop())
            if isinstance(n, exp.Add | exp.Sub | exp.Mul | exp.Div):
                stack += [n.this, n.expression]
            elif isinstance(n, exp.Neg):
                stack.append(n.this)
            elif isinstance(n, exp.Round | exp.Floor | exp.Ceil | exp.Abs):
                stack.append(n.this)
            elif isinstance(n, exp.Least | exp.Greatest | exp.Coalesce | exp.Nullif):
                stack += [a for a in (n.this, n.expression, *n.expressions) if a is not None]
            elif isinstance(n, exp.Null):
                continue
            elif isinstance(n, exp.Case | exp.If):  # CASE WHEN released condition THEN ...
                stack += self._analyst_branches(n)
            elif not isinstance(n, exp.Column | exp.Literal | exp.Boolean | exp.Neg):
                raise UnsupportedError(f"{short(n)} is not supported over released values",
                                       "use aggregates, literals, arithmetic, comparisons "
                                       "and CASE WHEN")
            else:
                t = self.operand(n, party=False)
                if t.kind not in ("num", None):
                    raise UnsupportedError(
                        f"{self.describe(n, t)} cannot be used in arithmetic",
                        "arithmetic takes numbers: aggregates, numeric group columns, numbers",
                    )

    def _analyst_branches(self, node: exp.Expr) -> list[exp.Expr]:
        """Check the conditions of a CASE / IF over released values; return its results."""
        if isinstance(node, exp.If):
            self.predicate(node.this, party=False)
            return [a for a in (node.args.get("true"), node.args.get("false")) if a is not None]
        results = []
        for branch in node.args.get("ifs") or []:
            self.predicate(branch.this, party=False)
            results.append(branch.args["true"])
        if node.args.get("default") is not None:
            results.append(node.args["default"])
        return results

    def released_value(self, node: exp.Expr) -> None:
        """A SELECT expression over released values: a condition, a CASE whose results are
        of one kind (text labels too), or a number."""
        inner = unparen(node)
        if functions.is_condition(inner):
            self.predicate(inner, party=False)
        elif isinstance(inner, exp.Case | exp.If):
            kinds = {self.operand(r, party=False).kind for r in self._analyst_branches(inner)
                     if not isinstance(unparen(r), exp.Null)}
            if len(kinds - {None}) > 1:
                raise UnsupportedError(f"the results of {short(inner)} are of different "
                                       "types", "give every THEN and ELSE one type")
        else:
            self.operand(inner, party=False)

