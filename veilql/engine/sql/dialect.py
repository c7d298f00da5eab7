"""The ``Veil`` sqlglot dialect: DuckDB plus BigQuery's differential-privacy clause.

VeilQL reads BigQuery's spelling of the privacy cost of a query::

    SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.0, delta = 1e-6) ...

sqlglot does not parse that clause, so the parser is extended at the one place where it
can appear: right after the ``SELECT`` keyword, where sqlglot parses optimizer hints
(``Parser._parse_hint``). The clause becomes a :class:`DifferentialPrivacy` node stored in the
Select's ``hint`` argument, which the generator prints back at the same place, so trees
round-trip through ``.sql(dialect=Veil)``. Other dialects have no generator for the node and
raise on it: strip it first (``veilql.engine.sql.parse.ParsedQuery.without_dp``).

>>> import sqlglot
>>> tree = sqlglot.parse_one(
...     "select with differential_privacy options(Epsilon=1, delta=1e-6) count(*) from bank.loans",
...     dialect=Veil)
>>> tree.sql(dialect=Veil)
'SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1, delta = 1e-6) COUNT(*) FROM bank.loans'
>>> dp_options(tree)
{'epsilon': 1.0, 'delta': 1e-06}
"""

from __future__ import annotations

import math

from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.generators.duckdb import DuckDBGenerator
from sqlglot.parsers.duckdb import DuckDBParser
from sqlglot.tokens import Token, TokenType

# Option names VeilQL reads. BigQuery's other options (privacy_unit_column,
# max_groups_contributed) are refused: VeilQL takes the privacy unit and contribution
# bounds from each party's policy, never from the analyst.
DP_OPTIONS: tuple[str, ...] = ("epsilon", "delta")
# VeilQL's own text option: ``purpose = '...'``, the analyst's stated reason for the query,
# recorded with it in every charged party's ledger.
TEXT_OPTIONS: tuple[str, ...] = ("purpose",)

# Prefix of every parse-error description raised for the clause, so callers can attach
# a clause-specific hint.
DP_ERROR_PREFIX = "DIFFERENTIAL_PRIVACY"


class DifferentialPrivacy(exp.Expression):
    """``WITH DIFFERENTIAL_PRIVACY OPTIONS (name = number, ...)`` after ``SELECT``.

    ``expressions`` holds one ``exp.EQ(this=exp.Var(name), expression=number)`` per option,
    in the order written; names are lower-cased, numbers keep the text the user wrote.
    """

    arg_types = {"expressions": False}


def _number_value(node: exp.Expr) -> float | None:
    """The value of a numeric literal, possibly negated; None for anything else."""
    sign = 1.0
    while isinstance(node, exp.Neg):
        sign, node = -sign, node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return sign * float(node.this.replace("_", ""))
        except ValueError:
            return None
    return None


def dp_purpose(select: exp.Expr) -> str | None:
    """The ``purpose = '...'`` option of a parsed Select (None when it has none).

    >>> import sqlglot
    >>> dp_purpose(sqlglot.parse_one(
    ...     "SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (purpose = 'audit') 1", dialect=Veil))
    'audit'
    """
    clause = select.args.get("hint")
    if not isinstance(clause, DifferentialPrivacy):
        return None
    for option in clause.expressions:
        value = option.expression
        if option.this.name.lower() == "purpose" and isinstance(value, exp.Literal):
            return str(value.this)
    return None


def dp_options(select: exp.Expr) -> dict[str, float]:
    """The DP options of a parsed Select, by lower-case name (empty when there is no clause).

    >>> import sqlglot
    >>> dp_options(sqlglot.parse_one("SELECT 1", dialect=Veil))
    {}
    """
    clause = select.args.get("hint")
    if not isinstance(clause, DifferentialPrivacy):
        return {}
    out: dict[str, float] = {}
    for option in clause.expressions:
        value = _number_value(option.expression)
        if value is not None:
            out[option.this.name.lower()] = value
    return out


class VeilParser(DuckDBParser):
    """DuckDB's parser, plus the DP clause in the hint position of ``SELECT``."""

    def _parse_hint(self) -> exp.Hint | None:  # type: ignore[override]
        # Only directly after SELECT: _parse_hint is also reached from other statements.
        if (
            self._prev is not None
            and self._prev.token_type == TokenType.SELECT
            and self._curr is not None
            and self._curr.token_type == TokenType.WITH
            and self._next is not None
            and self._next.text.upper() == "DIFFERENTIAL_PRIVACY"
        ):
            self._advance(2)
            return self._parse_dp_clause()  # type: ignore[return-value]
        return super()._parse_hint()

    def _parse_dp_clause(self) -> DifferentialPrivacy:
        """Parse ``[OPTIONS ( name = number [, ...] )]`` after ``WITH DIFFERENTIAL_PRIVACY``."""
        options: list[exp.EQ] = []
        if not self._match_text_seq("OPTIONS"):
            return self.expression(DifferentialPrivacy(expressions=options))
        if not self._match(TokenType.L_PAREN):
            self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS must be followed by '('")
        seen: set[str] = set()
        while self._curr is not None and not self._match(TokenType.R_PAREN):
            if options and not self._match(TokenType.COMMA):
                self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS: expected ',' or ')'")
            name_token = self._curr
            if name_token is None or name_token.token_type in (
                TokenType.COMMA, TokenType.R_PAREN, TokenType.STRING, TokenType.NUMBER,
            ):
                self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS: expected an option name")
                break
            self._advance()
            name = name_token.text.lower()
            if name not in DP_OPTIONS + TEXT_OPTIONS:
                self.raise_error(
                    f"{DP_ERROR_PREFIX} OPTIONS: unknown option {name_token.text!r}"
                    f" (known: {', '.join(DP_OPTIONS)})",
                    name_token,
                )
            if name in seen:
                self.raise_error(
                    f"{DP_ERROR_PREFIX} OPTIONS: option {name!r} given twice", name_token
                )
            seen.add(name)
            if not self._match(TokenType.EQ):
                self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS: expected '=' after {name!r}")
            value_token = self._curr
            value = self._parse_unary()
            options.append(self._checked_option(name, value, value_token))
        else:
            if self._prev is None or self._prev.token_type != TokenType.R_PAREN:
                self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS: missing ')'")
        return self.expression(DifferentialPrivacy(expressions=options))

    def _checked_option(
        self, name: str, value: exp.Expr | None, token: Token | None
    ) -> exp.EQ:
        """Check one option's value is a number in range (``purpose``: a string); return
        ``name = value``."""
        if name == "purpose":
            if not (isinstance(value, exp.Literal) and value.is_string):
                self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS: purpose must be a quoted string",
                                 token)
            return exp.EQ(this=exp.var(name), expression=value or exp.Null())
        number = _number_value(value) if value is not None else None
        if value is None or number is None or not math.isfinite(number):
            self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS: {name} must be a finite number", token)
        elif name == "epsilon" and not number > 0:
            self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS: epsilon must be > 0", token)
        elif name == "delta" and not 0 <= number < 1:
            self.raise_error(f"{DP_ERROR_PREFIX} OPTIONS: delta must be in [0, 1)", token)
        return exp.EQ(this=exp.var(name), expression=value or exp.Null())


def _dp_sql(generator: DuckDBGenerator, expression: DifferentialPrivacy) -> str:
    """Print the clause back in BigQuery's spelling, leading space included."""
    if not expression.expressions:
        return " WITH DIFFERENTIAL_PRIVACY"
    options = ", ".join(
        f"{option.this.name} = {generator.sql(option, 'expression')}"
        for option in expression.expressions
    )
    return f" WITH DIFFERENTIAL_PRIVACY OPTIONS ({options})"


class VeilGenerator(DuckDBGenerator):
    """DuckDB's generator, plus the DP clause."""

    TRANSFORMS = {**DuckDBGenerator.TRANSFORMS, DifferentialPrivacy: _dp_sql}


class Veil(DuckDB):
    """DuckDB's dialect, extended with ``SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (...)``."""

    Parser = VeilParser
    Generator = VeilGenerator
