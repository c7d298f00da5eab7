"""Binding on the sample-like federation: what the planner receives."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sql_fixtures import LOANS, catalog, federation
from sqlglot import exp

from veilql.engine.sql.bind import bind
from veilql.engine.sql.bound import BoundQuery, aliases_in, columns_used, parties_in
from veilql.engine.sql.parse import parse
from veilql.errors import PolicyError, UnsupportedError
from veilql.policies.model import ColumnPolicy, Federation, Party

RISK = """
SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.0, delta = 1e-6)
       c.region, COUNT(*) AS n, AVG(l.defaulted) AS default_rate, SUM(l.amount) total
FROM bank.customers AS c
JOIN bank.loans l ON c.customer_id = l.customer_id
JOIN payments.accounts a ON a.customer_id = c.customer_id
JOIN insurer.policies AS p ON p.customer_id = l.customer_id
WHERE a.monthly_txn_count > 10 AND p.open_claim = 1
  AND (c.region IN ('north', 'south') OR NOT c.age BETWEEN 20 AND 30)
GROUP BY c.region
HAVING COUNT(*) > 5 AND total < 1e9
ORDER BY default_rate DESC, 1
LIMIT 3
"""


def b(sql: str, fed: Federation | None = None) -> BoundQuery:
    return bind(parse(sql), fed or federation(), catalog())


def test_cross_party_query_binds() -> None:
    q = b(RISK)
    assert [(t.alias, t.party, t.table) for t in q.tables] == [
        ("c", "bank", "customers"), ("l", "bank", "loans"),
        ("a", "payments", "accounts"), ("p", "insurer", "policies"),
    ]
    assert q.tables[1].policy.max_rows_per_unit == 3
    assert [(j.left, j.right) for j in q.joins] == [("c", "l"), ("a", "c"), ("p", "l")]
    assert all(j.left_column == j.right_column == "customer_id" for j in q.joins)
    assert q.parties == ("bank", "payments", "insurer")
    assert [c.sql() for c in q.conjuncts] == [
        "a.monthly_txn_count > 10",
        "p.open_claim = 1",
        "c.region IN ('north', 'south') OR NOT c.age BETWEEN 20 AND 30",
    ]
    assert q.where is not None and q.where.sql().startswith("a.monthly_txn_count > 10 AND")
    assert [(g.alias, g.name, g.policy.role) for g in q.group_by] == [("c", "region", "group")]
    assert [(o.name, o.kind) for o in q.outputs] == [
        ("region", "group"), ("n", "count"), ("default_rate", "avg"), ("total", "sum"),
    ]
    region, _, rate, total = q.outputs
    assert region.column is not None and region.column.policy.values == (
        "north", "south", "east", "west", "central")
    assert rate.expr is not None and rate.expr.sql() == "l.defaulted" and rate.bounds == (0, 1)
    assert total.expr is not None and total.expr.sql() == "l.amount"
    assert total.bounds == (0, 100000)
    assert q.having is not None and q.having.sql() == "n > 5 AND total < 1e9"
    assert [(e.sql(), d) for e, d in q.order_by] == [("default_rate", True), ("region", False)]
    assert q.limit == 3
    assert (q.epsilon, q.delta) == (1.0, 1e-6)
    assert q.sql == RISK


def test_every_where_column_is_qualified() -> None:
    q = b(RISK)
    assert q.where is not None
    cols = list(q.where.find_all(exp.Column))
    assert cols and all(c.table in {"c", "l", "a", "p"} for c in cols)


def test_default_aliases_names_and_unqualified_columns() -> None:
    q = b("SELECT region, count(*), COUNT(*), count(DISTINCT customer_id), sum(income), "
          "avg(age) FROM bank.customers GROUP BY region")
    assert q.tables[0].alias == "customers"
    assert [o.name for o in q.outputs] == [
        "region", "count", "count_1", "count_distinct", "sum_income", "avg_age"]
    distinct = q.outputs[3]
    assert distinct.kind == "count_distinct"
    assert distinct.column is not None and distinct.column.column == "customer_id"
    assert q.epsilon is None and q.delta is None and q.limit is None


@pytest.mark.parametrize(
    ("arg", "bounds"),
    [
        ("amount", (0.0, 100000.0)),
        ("amount - 10", (-10.0, 99990.0)),
        ("-amount", (-100000.0, 0.0)),
        ("amount * -2", (-200000.0, 0.0)),
        ("(amount + defaulted) * 0.5", (0.0, 50000.5)),
        ("defaulted * amount", (0.0, 100000.0)),
        ("defaulted - 1", (-1.0, 0.0)),
    ],
)
def test_sum_bounds_by_interval_arithmetic(arg: str, bounds: tuple[float, float]) -> None:
    q = b(f"SELECT SUM({arg}) AS s FROM bank.loans")
    assert q.outputs[0].bounds == bounds


def test_cross_party_arithmetic_bounds() -> None:
    q = b("SELECT AVG(l.amount - p.claims_amount * 2) AS x FROM bank.loans l "
          "JOIN insurer.policies p ON l.customer_id = p.customer_id")
    out = q.outputs[0]
    assert out.bounds == (-200000.0, 100000.0)
    assert out.expr is not None and out.expr.sql() == "l.amount - p.claims_amount * 2"
    assert aliases_in(out.expr) == frozenset({"l", "p"})
    assert parties_in(out.expr, q) == frozenset({"bank", "insurer"})


def test_party_table_column_references() -> None:
    q = b("SELECT bank.loans.term_months, SUM(bank.loans.amount) FROM bank.loans "
          "WHERE bank.loans.amount > 5 GROUP BY bank.loans.term_months")
    assert [c.sql() for c in q.conjuncts] == ["loans.amount > 5"]
    assert q.group_by[0].name == "term_months"


def test_identifiers_are_case_insensitive() -> None:
    q = b("SELECT Region, COUNT(*) FROM BANK.Customers C WHERE C.AGE > 30 GROUP BY REGION")
    assert (q.tables[0].party, q.tables[0].table, q.tables[0].alias) == ("bank", "customers", "C")
    assert [c.sql() for c in q.conjuncts] == ["C.age > 30"]
    assert q.outputs[0].name == "region"  # the policy's spelling


@pytest.mark.parametrize(
    "predicate",
    [
        "c.region = 'north'", "c.region <> 'north'", "c.region IN ('north', 'east')",
        "c.region NOT IN ('west')", "l.term_months BETWEEN 12 AND 36", "l.term_months < 36",
        "l.term_months <= 36", "l.term_months > 12", "l.term_months >= 12",
        "c.region = c.branch", "l.amount > c.income / 10", "NOT (c.age > 30 OR l.amount < 5)",
        "l.amount * 2 + 1 >= c.income - c.age", "-l.amount < -5", "TRUE",
    ],
)
def test_where_accepts(predicate: str) -> None:
    q = b("SELECT COUNT(*) FROM bank.customers c JOIN bank.loans l "
          f"ON c.customer_id = l.customer_id WHERE {predicate}")
    assert q.where is not None


def test_value_columns_compare_across_parties() -> None:
    q = b("SELECT COUNT(*) FROM payments.accounts a JOIN insurer.policies p "
          "ON a.customer_id = p.customer_id WHERE a.monthly_txn_amount > p.premium * 2")
    assert parties_in(q.conjuncts[0], q) == frozenset({"payments", "insurer"})


def test_group_by_alias_and_unselected_group() -> None:
    q = b("SELECT c.region AS r, COUNT(*) AS n FROM bank.customers c GROUP BY r, c.branch")
    assert [g.name for g in q.group_by] == ["r", "branch"]
    assert q.outputs[0].name == "r" and q.outputs[0].group == q.group_by[0]


def test_having_and_order_by_rewrite_to_output_names() -> None:
    q = b("SELECT term_months AS t, COUNT(*) AS n, SUM(amount) FROM bank.loans "
          "GROUP BY term_months HAVING COUNT(*) >= 10 AND sum(amount) / n > 100 "
          "AND term_months IN (12, 24) ORDER BY SUM(amount) DESC, term_months, 2 DESC")
    assert q.having is not None
    assert q.having.sql() == "n >= 10 AND sum_amount / n > 100 AND t IN (12, 24)"
    assert [(e.sql(), d) for e, d in q.order_by] == [
        ("sum_amount", True), ("t", False), ("n", True)]


def test_order_by_position_out_of_range() -> None:
    with pytest.raises(UnsupportedError, match="not an output position"):
        b("SELECT COUNT(*) FROM bank.loans ORDER BY 2")


def test_columns_used() -> None:
    used = columns_used(b(RISK))
    assert used == {
        "c": {"customer_id", "region", "age"},
        "l": {"customer_id", "defaulted", "amount"},
        "a": {"customer_id", "monthly_txn_count"},
        "p": {"customer_id", "open_claim"},
    }


def test_limit_zero_and_options_without_delta() -> None:
    q = b("SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 2) COUNT(*) FROM bank.loans "
          "LIMIT 0")
    assert (q.limit, q.epsilon, q.delta) == (0, 2.0, None)


def test_value_without_bounds_refused() -> None:
    loans = replace(LOANS, columns={**LOANS.columns,
                                    "fee": ColumnPolicy("fee", "value", bounds=None)})
    fed = federation()
    bank = fed.party("bank")
    assert bank is not None
    parties = (replace(bank, tables={**bank.tables, "loans": loans}),) + fed.parties[1:]
    fed = replace(fed, parties=parties)
    with pytest.raises(PolicyError, match="has no bounds") as info:
        b("SELECT SUM(fee) FROM bank.loans", fed)
    assert "policies/bank.toml" in (info.value.hint or "")


def test_without_catalog_unknown_and_hidden_are_one_message() -> None:
    with pytest.raises(PolicyError, match=r"unknown column loan_id \(or not in its party's"):
        bind(parse("SELECT COUNT(*) FROM bank.loans WHERE loan_id > 1"), federation())


def test_group_column_without_public_values_is_allowed() -> None:
    q = b("SELECT branch, COUNT(*) FROM bank.customers GROUP BY branch")
    assert q.group_by[0].domain is None and q.group_by[0].private


def test_bound_query_is_frozen() -> None:
    q = b("SELECT COUNT(*) FROM bank.loans")
    with pytest.raises(AttributeError):
        q.limit = 3  # type: ignore[misc]
    assert q.table("loans").unit == "customer_id"
    assert q.output("count").kind == "count"


def test_empty_party_policy_lists_tables() -> None:
    fed = replace(federation(), parties=federation().parties + (Party("empty", "local", "x"),))
    with pytest.raises(PolicyError, match="unknown table empty.t") as info:
        b("SELECT COUNT(*) FROM empty.t", fed)
    assert info.value.hint == "known tables of empty: none"


# ---------------------------------------------------------------- types (engine/sql/typecheck.py)


def _typed(**types: str) -> Federation:
    """The sample federation with catalog types on bank.customers' and bank.loans' columns,
    plus a BOOLEAN value column ``flag``, a DATE group column ``opened`` and an unsigned
    and a TINYINT value column on customers."""
    fed = federation()
    bank = fed.party("bank")
    assert bank is not None
    customers, loans = bank.tables["customers"], bank.tables["loans"]
    extra = {
        "flag": ColumnPolicy("flag", "value", bounds=(0, 1)),
        "opened": ColumnPolicy("opened", "group"),
        "visits": ColumnPolicy("visits", "value", bounds=(0, 100)),
        "score": ColumnPolicy("score", "value", bounds=(0, 100)),
    }
    catalog_types = {"age": "INTEGER", "region": "VARCHAR", "income": "DECIMAL(12,2)",
                     "branch": "VARCHAR", "flag": "BOOLEAN", "opened": "DATE",
                     "visits": "UINTEGER", "score": "TINYINT", "amount": "DECIMAL(12,2)",
                     "term_months": "INTEGER", "defaulted": "INTEGER", **types}
    def typed(cols: dict[str, ColumnPolicy]) -> dict[str, ColumnPolicy]:
        return {n: replace(c, type=catalog_types.get(n, "BIGINT")) for n, c in cols.items()}
    tables = {"customers": replace(customers, columns=typed({**customers.columns, **extra})),
              "loans": replace(loans, columns=typed(loans.columns))}
    return replace(fed, parties=(replace(bank, tables=tables),) + fed.parties[1:])


ACCEPTED = [
    "c.region = 'north'", "c.region = c.branch", "c.age > 30", "c.age BETWEEN 18 AND 30.5",
    "c.income * c.income > 1", "c.age * 100000000.0 > 1", "c.age * 1e8 > 1",
    "c.income / 12 > 1000", "c.flag = TRUE", "NOT c.flag = FALSE",
    "c.opened = '2024-01-31'", "c.opened BETWEEN '2020-01-01' AND '2024-12-31 23:59:59'",
    "c.score * 1 > 5", "c.score * 3e0 > 5", "c.visits + 10 > 5", "l.term_months IN (12, 24.5)",
    "-c.age < -20", "c.age / c.age > 1",  # the divisor's bounds [18, 100] exclude 0
]
REFUSED = [
    ("c.branch = 5", "column c.branch (type VARCHAR) cannot be compared with the number 5"),
    ("c.age = 'x'", "type INTEGER"),
    ("c.age = '30'", "write the number without quotes"),
    ("c.region = c.age", "cannot be compared with column c.age (type INTEGER)"),
    ("c.age * 100000000 > 1", "beyond the integer type"),
    ("c.income * l.amount * 100000 > 1", "beyond the DECIMAL(18,4)"),
    ("c.score * 3 > 5", "beyond the integer type"),  # TINYINT * 3 is a TINYINT in DuckDB
    ("c.visits - 10 > 5", "beyond the integer type"),  # unsigned minus goes below zero
    ("-c.visits < 5", "beyond the integer type"),
    ("c.flag = 1", "compare c.flag with TRUE or FALSE"),
    ("c.flag * 2 > 1", "cannot be used in arithmetic"),
    ("c.age = TRUE", "cannot be compared with TRUE"),
    ("c.opened = 'yesterday'", "write it in ISO form"),
    ("c.opened = '2024-02-30'", "is not a valid value"),
    ("c.opened > 5", "cannot be compared"),
    ("c.age / (c.age - 18) > 1", "declared bounds [0, 82] include 0"),
    ("c.age / (1 - 1) > 1", "division by"),
    ("c.age > 1e400", "out of range"),
]


def test_predicates_are_typed_before_any_engine_sees_them() -> None:
    fed = _typed()
    sql = ("SELECT COUNT(*) FROM bank.customers c JOIN bank.loans l "
           "ON c.customer_id = l.customer_id WHERE ")
    for predicate in ACCEPTED:
        b(sql + predicate, fed)
    for predicate, fragment in REFUSED:
        with pytest.raises(UnsupportedError) as info:
            b(sql + predicate, fed)
        assert fragment in info.value.message + " " + (info.value.hint or ""), predicate
        assert info.value.exit_code == 1


def test_aggregate_arguments_are_typed() -> None:
    fed = _typed()
    b("SELECT SUM(c.flag) AS f, AVG(c.score) AS s FROM bank.customers c", fed)
    for arg, fragment in [("c.score * 3", "integer type"), ("c.flag * 2", "arithmetic"),
                          ("c.income * 1e14", "fixed point"), ("3 - 2", "reads no column")]:
        with pytest.raises(UnsupportedError, match=fragment):
            b(f"SELECT SUM({arg}) FROM bank.customers c", fed)


def test_cross_party_comparisons_are_on_fixed_point_numbers() -> None:
    fed = _typed()
    sql = ("SELECT COUNT(*) FROM bank.customers c JOIN insurer.policies p "
           "ON c.customer_id = p.customer_id WHERE ")
    b(sql + "c.income > p.premium * 10", fed)
    with pytest.raises(UnsupportedError, match="fixed point"):
        b(sql + "c.income * 1e13 > p.premium", fed)
    with pytest.raises(UnsupportedError, match="c.flag .type BOOLEAN. cannot be compared"):
        b(sql + "c.flag = p.open_claim", fed)


def test_having_and_order_by_are_typed_over_outputs() -> None:
    fed = _typed()
    b("SELECT c.region, COUNT(*) AS n FROM bank.customers c GROUP BY c.region "
      "HAVING n / 2 > 10 AND c.region = 'north' ORDER BY n * 2", fed)
    with pytest.raises(UnsupportedError, match="cannot be compared with the number 3"):
        b("SELECT c.region, COUNT(*) AS n FROM bank.customers c GROUP BY c.region "
          "HAVING c.region = 3", fed)
    with pytest.raises(UnsupportedError, match="cannot be used in arithmetic"):
        b("SELECT c.region, COUNT(*) AS n FROM bank.customers c GROUP BY c.region "
          "ORDER BY c.region + 1", fed)


# ---------------------------------------------------------------- the SQL of issue 14


def test_same_named_columns_get_duckdb_style_unique_names() -> None:
    q = b("SELECT c.region, a.segment, c.region AS r2, COUNT(*), COUNT(*), SUM(l.amount), "
          "SUM(l.amount) FROM bank.customers c JOIN bank.loans l ON c.customer_id = "
          "l.customer_id JOIN payments.accounts a ON a.customer_id = c.customer_id "
          "GROUP BY c.region, a.segment")
    assert [o.name for o in q.outputs] == [
        "region", "segment", "r2", "count", "count_1", "sum_amount", "sum_amount_1"]


def test_group_keys_are_named_uniquely_across_parties() -> None:
    fed = federation()
    payments = fed.party("payments")
    assert payments is not None
    accounts = payments.tables["accounts"]
    cols = {**accounts.columns, "region": ColumnPolicy("region", "group", values=("a", "b"))}
    fed = replace(fed, parties=(fed.parties[0], replace(payments, tables={
        "accounts": replace(accounts, columns=cols)}), fed.parties[2]))
    q = b("SELECT c.region, a.region, COUNT(*) FROM bank.customers c JOIN payments.accounts a "
          "ON c.customer_id = a.customer_id GROUP BY c.region, a.region", fed)
    assert [(g.name, g.party, g.domain) for g in q.group_by] == [
        ("region", "bank", ("north", "south", "east", "west", "central")),
        ("region_1", "payments", ("a", "b"))]
    assert [(o.name, o.group.name if o.group else None) for o in q.outputs[:2]] == [
        ("region", "region"), ("region_1", "region_1")]


def test_comma_joins_using_and_extra_on_conditions() -> None:
    q = b("SELECT COUNT(*) FROM bank.loans l, insurer.policies p, payments.accounts a "
          "WHERE l.customer_id = p.customer_id AND a.customer_id = p.customer_id "
          "AND p.open_claim = 1")
    assert [(j.left, j.right) for j in q.joins] == [("l", "p"), ("a", "p")]
    assert [c.sql() for c in q.conjuncts] == ["p.open_claim = 1"]
    q = b("SELECT COUNT(*) FROM bank.loans JOIN insurer.policies USING (customer_id)")
    assert [(j.left, j.right) for j in q.joins] == [("loans", "policies")]
    q = b("SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = "
          "p.customer_id AND l.amount > p.premium")
    assert [c.sql() for c in q.conjuncts] == ["l.amount > p.premium"]


def test_semi_and_anti_joins_bind_as_tables() -> None:
    q = b("SELECT COUNT(*) FROM bank.customers c WHERE c.customer_id IN (SELECT customer_id "
          "FROM insurer.policies WHERE open_claim = 1) AND NOT EXISTS (SELECT 1 FROM "
          "bank.loans l WHERE l.customer_id = c.customer_id AND l.defaulted = 1)")
    semi = [(t.alias, t.semi, t.filter.sql() if t.filter else None) for t in q.tables[1:]]
    assert semi == [("policies", "semi", "policies.open_claim = 1"),
                    ("l", "anti", "l.defaulted = 1")]
    assert q.parties == ("bank", "insurer")
    assert [c.sql() for c in q.conjuncts] == [
        "policies.__in = 1", "(l.__in IS NULL OR l.__in = 0)"]


def test_counts_filters_and_conditions_lower_to_indicators() -> None:
    q = b("SELECT COUNT(premium) AS a, COUNT(*) FILTER (WHERE premium > 5) AS b, "
          "SUM(premium > 5) AS c, AVG(premium) FILTER (WHERE open_claim = 1) AS d, "
          "COUNT(customer_id) AS e FROM insurer.policies")
    out = {o.name: o for o in q.outputs}
    assert out["a"].kind == "count" and out["a"].expr is not None
    assert out["a"].expr.sql() == "CASE WHEN NOT policies.premium IS NULL THEN 1 ELSE 0 END"
    assert out["b"].expr.sql() == "CASE WHEN policies.premium > 5 THEN 1 ELSE 0 END"
    assert out["c"].kind == "sum" and out["c"].bounds == (0.0, 1.0)
    assert out["d"].expr.sql() == "CASE WHEN policies.open_claim = 1 THEN policies.premium END"
    assert out["e"].kind == "count" and out["e"].expr is None  # units are never NULL


def test_expressions_over_aggregates_use_hidden_outputs() -> None:
    q = b("SELECT region, SUM(income) / COUNT(*) AS m, COUNT(*) AS n FROM bank.customers "
          "GROUP BY region HAVING AVG(age) > 30 ORDER BY SUM(income) DESC")
    assert [(o.name, o.kind, o.hidden) for o in q.outputs] == [
        ("region", "group", False), ("m", "expr", False), ("n", "count", False),
        ("__sum_income", "sum", True), ("__avg_age", "avg", True)]
    m = q.output("m")
    assert m.post is not None and m.post.sql() == "__sum_income / n"
    assert q.having is not None and q.having.sql() == "__avg_age > 30"
    assert [(e.sql(), d) for e, d in q.order_by] == [("__sum_income", True)]


@pytest.mark.parametrize(
    ("group", "domain"),
    [("CASE WHEN age < 30 THEN 'a' WHEN age < 60 THEN 'b' END", ("a", "b", None)),
     ("FLOOR(age / 25)", (0, 1, 2, 3, 4)),
     ("UPPER(region)", ("NORTH", "SOUTH", "EAST", "WEST", "CENTRAL")),
     ("SUBSTRING(region, 1, 1)", ("n", "s", "e", "w", "c")),
     ("branch", None), ("LOWER(branch)", None)],
)
def test_group_by_expressions_derive_a_public_domain(group: str, domain: object) -> None:
    q = b(f"SELECT {group} AS g, COUNT(*) FROM bank.customers GROUP BY 1")
    assert q.group_by[0].name == "g"
    assert q.group_by[0].domain == domain


def test_risky_functions_get_their_safe_form() -> None:
    q = b("SELECT SUM(income / age) AS d, SUM(LN(age)) AS l, SUM(SQRT(age)) AS s "
          "FROM bank.customers")
    d, ln, sq = (o.expr.sql() for o in q.outputs)  # type: ignore[union-attr]
    assert d == "customers.income / (CASE WHEN customers.age < 18 THEN 18 ELSE customers.age END)"
    assert ln == "LN((CASE WHEN customers.age < 18 THEN 18 ELSE customers.age END))"
    assert sq == "SQRT((CASE WHEN customers.age < 18 THEN 18 ELSE customers.age END))"
    assert q.outputs[0].bounds == (0.0, pytest.approx(500000 / 18))


def test_products_of_one_factor_per_party_bind_and_others_do_not() -> None:
    sql = ("SELECT SUM({}) FROM payments.accounts a JOIN insurer.policies p "
           "ON a.customer_id = p.customer_id")
    q = b(sql.format("a.monthly_txn_count * p.premium"))
    assert q.outputs[0].bounds == (0.0, 200 * 5000.0)
    b(sql.format("CASE WHEN a.monthly_txn_count > 3 THEN p.premium END"))
    with pytest.raises(UnsupportedError, match="adds columns of different parties"):
        b(sql.format("(a.monthly_txn_count + p.premium) * p.open_claim"))
    b(sql.format("a.monthly_txn_count / (p.premium + 1)"))  # x * (1 / D), D at insurer
    with pytest.raises(UnsupportedError, match="several parties' columns"):
        b(sql.format("p.open_claim / (a.monthly_txn_count + p.premium + 1)"))


def test_ctes_and_derived_tables_inline() -> None:
    q = b("WITH x AS (SELECT customer_id, amount * 2 AS a2 FROM bank.loans WHERE amount > 1), "
          "y AS (SELECT customer_id, a2 FROM x WHERE a2 < 100) "
          "SELECT SUM(y.a2) AS s FROM y JOIN (SELECT customer_id FROM insurer.policies) p "
          "ON y.customer_id = p.customer_id")
    assert [(t.alias, t.table) for t in q.tables] == [("y", "loans"), ("p", "policies")]
    assert q.outputs[0].expr is not None and q.outputs[0].expr.sql() == "y.amount * 2"
    assert [c.sql() for c in q.conjuncts] == ["(y.amount * 2) < 100", "y.amount > 1"]
