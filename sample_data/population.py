"""The synthetic population behind the sample federation, as numpy columns.

One person has an age, a region, an income and a latent payment activity. Each party
holds its own subset of the people, with correlated membership (a Gaussian copula:
people who bank also tend to pay and insure with the consortium), so the three-way
intersection is a sizeable minority. Within a party:

- bank: income is lognormal with a region- and age-dependent median; loan amounts are
  lognormal and scale with income; the default probability is logistic, decreasing in
  income and in observed payment activity (a fixed baseline for people the payments
  party does not know), increasing with the loan-to-income ratio and time on book;
- payments: transaction counts are Poisson around the person's activity; amounts are
  counts times a lognormal ticket size that grows with income;
- insurer: products depend on age; the open-claim probability is logistic in age;
  claims are zero unless a claim is open, lognormal otherwise.

Everything is vectorised and drawn from numpy's seeded ``Generator``: this is synthetic,
public test data, so a fast reproducible generator is right here (shares and noise in
VeilQL itself use a cryptographic source). Money is returned in integer cents, dates as
``datetime64[D]``. All values lie within the public bounds of ``schema``.

>>> t = simulate(1000, seed=1)
>>> sorted(t)
['bank.customers', 'bank.loans', 'insurer.policies', 'payments.accounts']
>>> bool(t["bank.loans"]["amount"].max() <= 100_000_00)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from sample_data.schema import ISSUE_YEARS, PRODUCTS, REGIONS, SEGMENTS, TERMS

Columns = dict[str, np.ndarray]

# Income medians by region (currency units a year): a capital region, a poorer south.
_REGION_SHARE = np.array([0.22, 0.20, 0.18, 0.18, 0.22])
_REGION_MEDIAN_INCOME = np.array([38_000.0, 33_000.0, 42_000.0, 47_000.0, 55_000.0])
_BRANCHES_PER_REGION = (9, 8, 7, 7, 12)
_REF_INCOME = 42_000.0  # reference point of the standardised log income
_REF_TXN = 20.0  # median monthly transactions of an average person

# Products by age band (<30, 30-54, >=55); columns follow schema.PRODUCTS.
_PRODUCT_BY_AGE = np.array([
    [0.30, 0.05, 0.10, 0.35, 0.20],
    [0.28, 0.22, 0.25, 0.20, 0.05],
    [0.35, 0.30, 0.22, 0.10, 0.03],
])
_PREMIUM_BASE = np.array([1_400.0, 600.0, 450.0, 900.0, 120.0])
_CLAIM_LOGIT = np.array([0.4, -0.8, 0.0, 0.2, -0.5])
_CLAIM_MEDIAN = np.array([2_500.0, 25_000.0, 7_000.0, 4_000.0, 900.0])


@dataclass(frozen=True)
class Membership:
    """Target share of people at each party and the copula correlation of membership.

    With correlation 0.45 the three-way intersection is about a quarter of the people
    (0.21 if membership were independent).
    """

    bank: float = 0.70
    payments: float = 0.60
    insurer: float = 0.50
    correlation: float = 0.45


def simulate(people: int, seed: int = 7, membership: Membership | None = None) -> dict[
        str, Columns]:
    """Columns of every table, keyed ``"party.table"``, for ``people`` persons.

    Same ``people`` and ``seed`` give identical arrays on every machine (numpy's PCG64
    streams are platform independent).
    """
    if people < 1:
        raise ValueError(f"people must be at least 1, got {people}")
    m = membership or Membership()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
    person = _people(people, streams[0])
    at_bank, at_payments, at_insurer = _membership(people, m, streams[1])
    accounts = _accounts(person, at_payments, streams[2])
    # Activity the bank's default risk depends on: observed where payments knows the
    # person, a fixed (slightly worse than average) baseline elsewhere.
    activity = np.full(people, -0.25)
    activity[at_payments] = (np.log1p(accounts["monthly_txn_count"]) - np.log1p(_REF_TXN)) / 0.7
    customers, loans = _bank(person, at_bank, activity, streams[3])
    policies = _insurer(person, at_insurer, streams[4])
    return {
        "bank.customers": customers,
        "bank.loans": loans,
        "payments.accounts": accounts,
        "insurer.policies": policies,
    }


def _cents(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Currency amounts clipped to the public bounds, as int64 cents."""
    return np.rint(np.clip(x, low, high) * 100).astype(np.int64)


def _logistic(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _people(n: int, rng: np.random.Generator) -> Columns:
    """Person-level attributes every party's data derives from."""
    age = np.clip(np.floor(18 + rng.beta(2.0, 3.2, n) * 72), 18, 90).astype(np.int32)
    region = rng.choice(len(REGIONS), size=n, p=_REGION_SHARE)
    # Income peaks in mid-career and drops at retirement; lognormal spread around it.
    career = 0.3 * (1 - ((age - 50) / 32.0) ** 2) - 0.3 * (age >= 67)
    log_income = np.log(_REGION_MEDIAN_INCOME[region]) + career + rng.normal(0, 0.55, n)
    income = np.clip(np.exp(log_income), 6_000, 500_000)
    z_income = (np.log(income) - np.log(_REF_INCOME)) / 0.6
    # Latent payment activity: higher for richer and for younger people.
    activity = 0.45 * z_income - 0.2 * (age - 45) / 15.0 + rng.normal(0, 0.85, n)
    return {
        "customer_id": np.arange(1, n + 1, dtype=np.int64),
        "age": age,
        "region": region,
        "income": income,
        "z_income": z_income,
        "activity": activity,
    }


def _membership(n: int, m: Membership, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Boolean masks of who is at bank, payments, insurer (Gaussian copula)."""
    common = rng.standard_normal(n)
    own = rng.standard_normal((3, n))
    r = m.correlation
    latent = r * common + np.sqrt(1 - r * r) * own
    cut = [NormalDist().inv_cdf(s) for s in (m.bank, m.payments, m.insurer)]
    return tuple(latent[i] < cut[i] for i in range(3))


def _branches(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A branch per customer: Zipf-sized branches within each region, some of them tiny."""
    branch = np.empty(region.size, dtype=object)
    for r, name in enumerate(REGIONS):
        idx = np.flatnonzero(region == r)
        k = _BRANCHES_PER_REGION[r]
        w = 1.0 / np.arange(1, k + 1) ** 1.5
        labels = np.array([f"{name}-{j:02d}" for j in range(1, k + 1)], dtype=object)
        branch[idx] = labels[rng.choice(k, size=idx.size, p=w / w.sum())]
    return branch


def _bank(p: Columns, at: np.ndarray, activity: np.ndarray,
          rng: np.random.Generator) -> tuple[Columns, Columns]:
    """bank.customers and bank.loans (0 to 3 loans per customer)."""
    idx = np.flatnonzero(at)
    region = p["region"][idx]
    customers = {
        "customer_id": p["customer_id"][idx],
        "age": p["age"][idx],
        "region": np.array(REGIONS, dtype=object)[region],
        "branch": _branches(region, rng),
        "income": _cents(p["income"][idx], 0, 500_000),
    }
    n_loans = rng.choice(4, size=idx.size, p=[0.20, 0.50, 0.20, 0.10])
    owner = np.repeat(idx, n_loans)
    n = owner.size
    income = p["income"][owner]
    term = np.array(TERMS)[rng.choice(len(TERMS), size=n, p=[0.2, 0.3, 0.3, 0.2])]
    # Amount: lognormal around 30% of yearly income, longer terms borrow more.
    raw = income * np.exp(rng.normal(np.log(0.3), 0.6, n)) * (term / 36.0) ** 0.4
    amount = np.clip(np.round(raw, -2), 500, 100_000)
    first = np.datetime64(f"{ISSUE_YEARS[0]}-01-01")
    end = np.datetime64(f"{ISSUE_YEARS[-1] + 1}-01-01")
    issued = first + rng.integers(0, (end - first).astype(int), n).astype("timedelta64[D]")
    years_on_book = (end - issued).astype(np.float64) / 365.25
    logit = (
        -3.0
        - 0.75 * p["z_income"][owner]
        - 0.55 * activity[owner]
        + 0.35 * np.log(amount / income / 0.3)
        + 0.12 * years_on_book
    )
    defaulted = (rng.random(n) < _logistic(logit)).astype(np.int32)
    # loan_id follows issue date, like a bank's running number.
    order = np.argsort(issued, kind="stable")
    loans = {
        "loan_id": np.arange(1, n + 1, dtype=np.int64),
        "customer_id": p["customer_id"][owner][order],
        "amount": _cents(amount[order], 0, 100_000),
        "term_months": term[order].astype(np.int32),
        "defaulted": defaulted[order],
        "issued_on": issued[order],
        "issued_year": issued[order].astype("datetime64[Y]").astype(np.int32) + 1970,
    }
    return customers, loans


def _accounts(p: Columns, at: np.ndarray, rng: np.random.Generator) -> Columns:
    """payments.accounts: one account per member."""
    idx = np.flatnonzero(at)
    n = idx.size
    age, income = p["age"][idx], p["income"][idx]
    count = np.minimum(rng.poisson(_REF_TXN * np.exp(0.7 * p["activity"][idx])), 200)
    ticket = np.exp(np.log(32.0) + 0.35 * p["z_income"][idx] + rng.normal(0, 0.5, n))
    u = rng.random(n)
    segment = np.zeros(n, dtype=np.int64)  # standard
    segment[(income > 90_000) | ((p["activity"][idx] > 1.2) & (income > 60_000))] = 1
    segment[(age < 26) & (u < 0.6)] = 3
    segment[u > 0.93] = 2  # business accounts, at any age
    return {
        "customer_id": p["customer_id"][idx],
        "segment": np.array(SEGMENTS, dtype=object)[segment],
        "monthly_txn_count": count.astype(np.int32),
        "monthly_txn_amount": _cents(count * ticket, 0, 20_000),
    }


def _insurer(p: Columns, at: np.ndarray, rng: np.random.Generator) -> Columns:
    """insurer.policies: one policy per member."""
    idx = np.flatnonzero(at)
    n = idx.size
    age = p["age"][idx]
    band = np.digitize(age, [30, 55])
    # Inverse-CDF draw per age band, vectorised.
    cdf = np.cumsum(_PRODUCT_BY_AGE, axis=1)[band]
    product = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), len(PRODUCTS) - 1)
    age_factor = np.select(
        [product == 0, product == 1, product == 3],
        [1 + (age - 18) / 40.0, np.exp((age - 40) / 30.0), np.where(age < 25, 1.6, 1.0)],
        1.0,
    )
    premium = _PREMIUM_BASE[product] * age_factor * np.exp(rng.normal(0, 0.25, n))
    logit = -2.6 + 0.035 * (age - 45) + _CLAIM_LOGIT[product]
    open_claim = (rng.random(n) < _logistic(logit)).astype(np.int32)
    claim = np.exp(rng.normal(np.log(_CLAIM_MEDIAN[product]), 0.9))
    return {
        "customer_id": p["customer_id"][idx],
        "product": np.array(PRODUCTS, dtype=object)[product],
        "premium": _cents(premium, 0, 5_000),
        "open_claim": open_claim,
        "claims_amount": _cents(np.where(open_claim == 1, claim, 0.0), 0, 100_000),
    }
