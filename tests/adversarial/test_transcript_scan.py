"""Adversarial audit: no transcript shows another party's per-person data.

With ``VEIL_TRANSCRIPT_DIR`` every party node and the analyst append each frame delivered to
them to ``DIR/<party>.bin`` / ``DIR/analyst.bin`` (docs/SECURITY.md, "Transcripts"). This
module runs the sample federation's cross-party queries in-process and over three real
``veil serve`` processes, parses every record, and scans each receiver's transcript for
every *other* party's unit keys and row values (the analyst: every party's, except the group
labels it is allowed to see released).

What is looked for (``collect_secrets``), per party: every unit key; every value of every
numeric column of its tables, raw and in fixed point (times 10^decimals of the policy, as
the plan encodes it, or of the column's own scale); for tables with several rows per person,
the person's sums over every subset of up to ``max_rows_per_unit`` rows (what a factor
carries); the strings of group columns without a public domain (e.g. bank's branches).

Encodings (``scan_records``):

* integers at 8, 16, 32 and 64 bits, the value and its negation (two's complement), little-
  and big-endian, at every byte offset of every binary payload; raw values as float64 too;
* decimal text: whole tokens (not inside a longer run of letters or digits) in every text
  payload and tag, and tokens of 7 or more digits inside binary payloads;
* JSON: every payload that parses as JSON is walked and every number and string (object keys
  included, and the numbers written inside strings) is compared;
* strings: exact JSON strings, substrings of text, and (6 bytes or more) bytes in binary.

False-positive rule, so the test cannot be flaky:

* Too common to mean anything: values below 256 in magnitude are not looked for in text or
  JSON, nor at 8- and 16-bit widths (they are every header byte, every small count, every
  age); bit-like patterns (every byte 0 or 1) are not looked for in binary (bit shares and
  flags are made of such bytes); strings shorter than 4 characters are not looked for.
* Public by declaration: policy bounds and public group domains; array headers of
  ``encode_array`` payloads (dtype and shape: table sizes are public, docs/SECURITY.md);
  the public fields of the protocol's JSON messages (remaining budget, ledger sequence
  number) and the sizes in shape announcements; the viewer's published match positions
  (a public random offset plus consecutive integers) at widths below 64 bits.
* Chance baseline: a scan asserts zero hits only where its expected number of chance hits on
  uniformly random bytes (what shares are) is at most ``MAX_CHANCE``, computed from the
  number of patterns and windows (~1e-6 for the 64-bit scan of the demo's transcripts). At
  32 bits chance hits are expected (thousands per transcript), so the number of distinct
  real patterns hit is compared with ``DECOYS`` decoy sets drawn from the same distribution
  (each real pattern's high 16 bits kept, its low 16 bits random, real patterns left out):
  the decoys must hit what uniform bytes predict (within 6 standard deviations), and the
  real values may not exceed that rate by more than 6 standard deviations plus 6, so a bulk
  leak of a few hundred values is caught. An encoding whose patterns cover more than 1/64
  of all values of its width (16-bit here: the demo's keys fill 2..20000) matches almost
  every window by chance and carries no signal; it is reported as skipped, as is 8-bit,
  which holds no value of 256 or more.

``test_the_scan_finds_planted_leaks`` shows every encoding is found when planted and that
random bytes of the same size give no hit.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from oracle import HUGE_EPSILON, oracle_federation
from test_network import QUERIES, Cluster, cluster  # noqa: F401 - the fixture is reused

import veilql
from veilql.connectors.base import open_connector
from veilql.engine.dp import LargeEpsilonWarning
from veilql.engine.transport.base import decode_array
from veilql.errors import BudgetExceeded, VeilError
from veilql.policies.loader import load_federation
from veilql.policies.model import Federation

DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "demo"
ANALYST = "analyst"
MIN_VALUE = 256  # magnitudes below are too common to mean anything (see the module doc)
MIN_STRING = 4  # characters; shorter strings are too common
MIN_BINARY_STRING = 6  # bytes; a private string looked for inside binary payloads
MIN_BINARY_DIGITS = 7  # a decimal token looked for inside binary payloads
MAX_CHANCE = 1e-3  # expected chance hits above which a scan compares with decoys instead
MAX_COVERAGE = 1 / 64  # patterns / all values of a width above which a width is uninformative
DECOYS = 6
PUBLIC_FIELDS = frozenset({"seq", "epsilon_remaining", "delta_remaining"})
SHAPE_TAG = re.compile(r"/shape/[^/]+$")  # a data party announces its (public) array sizes
TOKEN = re.compile(r"(?<![0-9A-Za-z_.])-?[0-9]+(?:\.[0-9]+)?(?![0-9A-Za-z_])")
BTOKEN = re.compile(TOKEN.pattern.encode())

CROSS = QUERIES[1:]  # test_network's cross-party queries (QUERIES[0] is local mode)


# --------------------------------------------------------------------------- records
def read_records(path: Path) -> list[tuple[str, str, bytes]]:
    """Parse a transcript strictly by the documented format (not with the library's reader):
    u32 sender length, sender, u32 tag length, tag, u64 payload length, payload, all
    little-endian, back to back to the end of the file."""
    data = path.read_bytes()
    out, i = [], 0
    while i < len(data):
        parts = []
        for size in ("<I", "<I", "<Q"):
            assert i + struct.calcsize(size) <= len(data), f"{path}: truncated at byte {i}"
            (n,) = struct.unpack_from(size, data, i)
            i += struct.calcsize(size)
            assert i + n <= len(data), f"{path}: record overruns the file at byte {i}"
            parts.append(data[i:i + n])
            i += n
        out.append((parts[0].decode(), parts[1].decode(), parts[2]))
    return out


def split_tag(recorded: str) -> tuple[str, str]:
    """``(kind, tag on the wire)``: control frames are recorded as ``!<kind>/<tag>``."""
    if not recorded.startswith("!"):
        return "data", recorded
    kind, _, tag = recorded[1:].partition("/")
    return kind, tag


# --------------------------------------------------------------------------- secrets
@dataclass
class Secrets:
    """Values a receiver must not see: ``value -> what it is`` per kind."""

    ints: dict[int, str] = field(default_factory=dict)
    decimals: dict[Decimal, str] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)

    def update(self, other: Secrets) -> None:
        """Add every value of ``other``."""
        for mine, theirs in ((self.ints, other.ints), (self.decimals, other.decimals),
                             (self.strings, other.strings)):
            for k, v in theirs.items():
                mine.setdefault(k, v)

    def drop(self, other: Secrets) -> None:
        """Remove every value of ``other``."""
        for k in other.ints:
            self.ints.pop(k, None)
            self.decimals.pop(Decimal(k), None)
        for d in other.decimals:
            self.decimals.pop(d, None)
            if d == d.to_integral_value():
                self.ints.pop(int(d), None)
        for s in other.strings:
            self.strings.pop(s, None)

    def __len__(self) -> int:
        return len(self.ints) + len(self.decimals) + len(self.strings)


@dataclass
class FederationSecrets:
    """Per party its secrets and its group values; the public values of the policies."""

    parties: dict[str, Secrets]
    groups: Secrets
    public: Secrets

    def for_receiver(self, receiver: str) -> Secrets:
        """What ``receiver`` must not see: every other party's values (the analyst: every
        party's but the group labels, which partition selection releases)."""
        out = Secrets()
        for party, secrets in self.parties.items():
            if party != receiver:
                out.update(secrets)
        out.drop(self.public)
        if receiver == ANALYST:
            out.drop(self.groups)
        return out


def _as_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(value))
    return None


def _add_number(out: Secrets, d: Decimal, decimals: int, what: str) -> None:
    """A raw value and its fixed-point encoding(s)."""
    if d == d.to_integral_value():
        out.ints.setdefault(int(d), what)
    else:
        out.decimals.setdefault(d.normalize(), what)
    scales = {decimals, max(0, -int(d.as_tuple().exponent))}
    for s in scales:
        out.ints.setdefault(int((d.scaleb(s)).to_integral_value()), f"{what} in fixed point")


def collect_secrets(federation: Federation) -> FederationSecrets:
    """Read every party's tables (through its own connector) into ``FederationSecrets``."""
    parties: dict[str, Secrets] = {}
    groups, public = Secrets(), Secrets()
    for party in federation.parties:
        mine = parties.setdefault(party.name, Secrets())
        for policy in party.tables.values():
            for col in policy.columns.values():
                for v in (*(col.bounds or ()), *(col.values or ())):
                    if isinstance(v, str):
                        public.strings[v] = "public"
                    elif (d := _as_decimal(v)) is not None:
                        _add_number(public, d, col.decimals, "public")
        conn = open_connector(party.connector, federation.root)
        try:
            for table in conn.catalog():
                rows = conn.run(f'SELECT * FROM "{table}"').to_pylist()
                policy = party.tables.get(table)
                cols = policy.columns if policy else {}
                for name in rows[0] if rows else ():
                    what = f"{party.name}.{table}.{name}"
                    col = cols.get(name)
                    role = col.role if col else None
                    for row in rows:
                        v = row[name]
                        if isinstance(v, str):
                            if role == "group":
                                groups.strings[v] = what
                            if len(v) >= MIN_STRING:
                                mine.strings.setdefault(v, what)
                        elif (d := _as_decimal(v)) is not None:
                            _add_number(mine, d, col.decimals if col else 0,
                                        f"unit key {what}" if role == "key" else what)
                            if role == "group":
                                _add_number(groups, d, col.decimals, what)
                if policy and policy.max_rows_per_unit > 1:
                    _add_subset_sums(mine, rows, policy, f"{party.name}.{table}")
        finally:
            conn.close()
    return FederationSecrets(parties, groups, public)


def _add_subset_sums(out: Secrets, rows: list[dict], policy: Any, where: str) -> None:
    """Per person, the fixed-point sums of every subset of 2..max_rows_per_unit of their rows."""
    by_unit: dict[Any, list[dict]] = defaultdict(list)
    for row in rows:
        by_unit[row[policy.privacy_unit]].append(row)
    values = [c for c in policy.columns.values() if c.role == "value"]
    for unit_rows in by_unit.values():
        if len(unit_rows) < 2 or len(unit_rows) > 8:
            continue
        for col in values:
            fixed = [int(_as_decimal(r[col.name]).scaleb(col.decimals).to_integral_value())
                     for r in unit_rows if _as_decimal(r[col.name]) is not None]
            for k in range(2, min(policy.max_rows_per_unit, len(fixed)) + 1):
                for combo in combinations(fixed, k):
                    out.ints.setdefault(sum(combo), f"per-person sum of {where}.{col.name}")


# --------------------------------------------------------------------------- patterns
def _bitlike(p: np.ndarray, width: int) -> np.ndarray:
    """Which patterns have only 0 and 1 bytes (as bit shares and flags do)."""
    return (p.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :width] <= 1).all(axis=1)


def _int_array(values: Iterable[int]) -> np.ndarray:
    return np.array([v for v in values if abs(v) < 1 << 62], dtype=np.int64)


def int_patterns(values: np.ndarray, width: int) -> np.ndarray:
    """Distinct ``width``-byte patterns (the little-endian reading, as uint64) of every value
    and its negation that fits the width signed or unsigned; bit-like ones left out."""
    bits = 8 * width
    xs = np.concatenate([values, -values])
    if bits < 64:
        xs = xs[(xs >= -(1 << (bits - 1))) & (xs < (1 << bits))]
    p = xs.astype(np.uint64)
    if bits < 64:
        p &= np.uint64((1 << bits) - 1)
    p = np.unique(p)
    return p[~_bitlike(p, width)]


def float_patterns(values: Iterable[Decimal]) -> np.ndarray:
    """64-bit patterns of every value (and its negation) as a float64."""
    f = np.array([float(d) for d in values], dtype=np.float64)
    p = np.unique(np.concatenate([f, -f]).view(np.uint64))
    return p[~_bitlike(p, 8)]


def same_high_half(real: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """A decoy set: each real pattern's high half kept, its low half drawn at random, real
    patterns and bit-like ones left out (so decoys have the real values' magnitudes)."""
    half = 4 * width
    low = np.uint64((1 << half) - 1)
    d = (real & ~low) | rng.integers(0, 1 << half, len(real), dtype=np.uint64)
    if width < 8:
        d &= np.uint64((1 << (8 * width)) - 1)
    d = np.unique(d)
    return d[~np.isin(d, real) & ~_bitlike(d, width)]


class PatternSet:
    """Sorted patterns of one width plus a 64 KB prefilter table: the top 16 bits of each
    pattern (the whole value at 16 bits), so most windows are rejected from cache."""

    def __init__(self, width: int, patterns: np.ndarray) -> None:
        self.width = width
        self.values = np.unique(patterns).astype(np.uint64)
        self.table = np.zeros(1 << 16, dtype=bool)
        self.table[self.top16(self.values)] = True

    def top16(self, words: np.ndarray) -> np.ndarray:
        """The prefilter key of patterns or windows (uint of this width)."""
        shift = 8 * self.width - 16
        return words >> words.dtype.type(shift) if shift else words

    def find(self, candidates: np.ndarray) -> np.ndarray:
        """Mask of the candidates that are patterns."""
        return member(candidates, self.values)


def member(x: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Mask of the ``x`` found in ``sorted_values`` (sorted, distinct)."""
    if len(x) == 0 or len(sorted_values) == 0:
        return np.zeros(len(x), dtype=bool)
    i = np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)
    return sorted_values[i] == x


def _words32(b: np.ndarray) -> np.ndarray:
    """The little-endian uint32 starting at every byte offset of ``b``."""
    n = len(b) - 3
    if n <= 0:
        return np.zeros(0, dtype=np.uint32)
    out = np.empty(n, dtype=np.uint32)
    for o in range(4):
        k = (len(b) - o) // 4
        out[o::4] = b[o:o + 4 * k].view("<u4")
    return out


def hits(b: np.ndarray, ps: PatternSet, le32: np.ndarray | None = None
         ) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Per byte order, ``(patterns matched, window offsets)`` of every window of ``b``."""
    w = ps.width
    out = []
    if len(b) < w:
        return out
    if w in (4, 8):
        le = _words32(b) if le32 is None else le32
        be = le.byteswap()
        if w == 8:
            last = len(b) - 8
            s = np.flatnonzero(ps.table[le[4:last + 5] >> np.uint32(16)])
            out.append((le[s].astype(np.uint64) | (le[s + 4].astype(np.uint64) << 32), s,
                        "little-endian"))
            s = np.flatnonzero(ps.table[be[:last + 1] >> np.uint32(16)])
            out.append(((be[s].astype(np.uint64) << 32) | be[s + 4].astype(np.uint64), s,
                        "big-endian"))
        else:
            for words, order in ((le, "little-endian"), (be, "big-endian")):
                s = np.flatnonzero(ps.table[ps.top16(words)])
                out.append((words[s].astype(np.uint64), s, order))
    elif w == 2:
        le16 = b[:-1].astype(np.uint16) | (b[1:].astype(np.uint16) << np.uint16(8))
        for words, order in ((le16, "little-endian"), (le16.byteswap(), "big-endian")):
            s = np.flatnonzero(ps.table[ps.top16(words)])
            out.append((words[s].astype(np.uint64), s, order))
    return [(c[m], s[m], order) for c, s, order in out for m in [ps.find(c)]]


# --------------------------------------------------------------------------- scanning
@dataclass
class Finding:
    """A secret found in a record."""

    record: int
    sender: str
    tag: str
    encoding: str
    what: str
    offset: int | None = None

    def __str__(self) -> str:
        at = f" at byte {self.offset}" if self.offset is not None else ""
        return (f"record {self.record} from {self.sender!r} tagged {self.tag!r}{at}: "
                f"{self.what} ({self.encoding})")


@dataclass
class Comparison:
    """A width scanned against decoys: distinct patterns hit, real and decoy."""

    width: int
    real_hits: int
    real_expected: float
    decoy_hits: list[int]
    decoy_expected: float
    examples: list[str]

    @property
    def baseline_ok(self) -> bool:
        """The decoys match the uniform-bytes chance model (6 standard deviations)."""
        total = sum(self.decoy_hits)
        return abs(total - self.decoy_expected) <= 6 * math.sqrt(self.decoy_expected) + 6

    @property
    def threshold(self) -> float:
        """Most real hits chance explains, scaled by what the decoys actually got."""
        rho = (sum(self.decoy_hits) + 1) / (self.decoy_expected + 1)
        mean = rho * self.real_expected
        return mean + 6 * math.sqrt(mean * (1 + 1 / len(self.decoy_hits))) + 6

    @property
    def leak(self) -> bool:
        """More real values hit than chance explains."""
        return self.real_hits > self.threshold


@dataclass
class ScanReport:
    """What one transcript's scan found and how it was done."""

    name: str
    records: int = 0
    payload_bytes: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    chance: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every reason to fail: hits, leaks beyond chance, a broken chance model."""
        out = [str(f) for f in self.findings[:20]]
        for c in self.comparisons:
            if c.leak:
                out.append(f"{c.width * 8}-bit: {c.real_hits} real values hit, chance explains "
                           f"at most {c.threshold:.0f} (decoys {c.decoy_hits}); e.g. "
                           f"{c.examples[:3]}")
            if not c.baseline_ok:
                out.append(f"{c.width * 8}-bit: decoys hit {sum(c.decoy_hits)}, uniform bytes "
                           f"give {c.decoy_expected:.0f}: the chance model does not hold")
        out += [f"{k}: {v:.2g} chance hits expected, above {MAX_CHANCE}"
                for k, v in self.chance.items() if v > MAX_CHANCE]
        return out


def _classify(payload: bytes) -> tuple[str, Any]:
    """``("json", obj)``, ``("text", str)``, ``("array", data bytes)`` or ``("binary", b)``."""
    if payload:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            try:
                return "json", json.loads(text)
            except ValueError:
                pass
            if all(c.isprintable() or c in "\n\r\t" for c in text):
                return "text", text
        try:
            arr = decode_array(payload)
        except VeilError:
            pass
        else:  # the header (dtype, shape) is public; the body is what is scanned
            return "array", payload[len(payload) - arr.nbytes:]
    return "binary", payload


class Scanner:
    """Scans transcripts for one receiver's ``Secrets`` (see the module docstring)."""

    def __init__(self, secrets: Secrets, *, seed: int = 0) -> None:
        self.secrets = secrets
        rng = np.random.default_rng(seed)
        ints = _int_array(secrets.ints)
        big = ints[np.abs(ints) >= MIN_VALUE]
        raw = [Decimal(v) for v in secrets.ints] + list(secrets.decimals)
        self.exact = PatternSet(8, np.concatenate([
            int_patterns(ints, 8), float_patterns(d for d in raw if abs(d) >= MIN_VALUE)]))
        self.compare: dict[int, tuple[PatternSet, np.ndarray, list[np.ndarray]]] = {}
        self.skipped: list[str] = ["8-bit: no value of magnitude 256 or more fits one byte"]
        for width in (4, 2):
            real = int_patterns(ints if width > 2 else big, width)
            coverage = len(real) / 2 ** (8 * width)
            if coverage > MAX_COVERAGE:
                self.skipped.append(
                    f"{8 * width}-bit: the {len(real)} patterns cover {coverage:.0%} of all "
                    f"{8 * width}-bit values, so nearly every window matches by chance")
                continue
            decoys = [same_high_half(real, width, rng) for _ in range(DECOYS)]
            every = np.concatenate([real, *decoys])
            self.compare[width] = (PatternSet(width, every), real, decoys)
        self.ints = {v: w for v, w in secrets.ints.items() if abs(v) >= MIN_VALUE}
        self.decimals = {d: w for d, w in secrets.decimals.items() if abs(d) >= MIN_VALUE}
        self.strings = {s: w for s, w in secrets.strings.items() if len(s) >= MIN_STRING}
        self.binary_strings = [(s.encode(), w) for s, w in self.strings.items()
                               if len(s.encode()) >= MIN_BINARY_STRING]

    def describe(self, pattern: int, width: int) -> str:
        """Which secret a matched ``width``-byte pattern encodes, and how."""
        bits = 8 * width
        signed = pattern - (1 << bits) if pattern >= 1 << (bits - 1) else pattern
        for v, sign in ((pattern, ""), (signed, ""), (-signed, "negated ")):
            if v in self.secrets.ints:
                return f"{self.secrets.ints[v]} = {v} as {sign}{bits}-bit integer"
        if width == 8:
            (f,) = struct.unpack("<d", struct.pack("<Q", pattern))
            if math.isfinite(f):
                d = Decimal(repr(abs(f)))
                what = self.secrets.ints.get(int(d)) if d == d.to_integral_value() else \
                    self.secrets.decimals.get(d.normalize())
                if what:
                    return f"{what} = {d} as float64"
        return f"pattern {pattern:#x}"

    # -- values in text ------------------------------------------------------------------
    def _number(self, token: str) -> str | None:
        try:
            d = Decimal(token)
        except InvalidOperation:
            return None
        if abs(d) < MIN_VALUE:
            return None
        if d == d.to_integral_value() and int(d) in self.ints:
            return f"{self.ints[int(d)]} = {token}"
        if d.normalize() in self.decimals:
            return f"{self.decimals[d.normalize()]} = {token}"
        return None

    def _text(self, text: str) -> Iterator[tuple[str, str]]:
        for m in TOKEN.finditer(text):
            hit = self._number(m.group())
            if hit:
                yield "decimal text", hit
        for s, what in self.strings.items():
            if s in text:
                yield "string in text", f"{what} = {s!r}"

    def _json(self, obj: Any, public: bool, key: str | None = None) -> Iterator[tuple[str, str]]:
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from self._json(k, public)
                yield from self._json(v, public or k in PUBLIC_FIELDS, k)
        elif isinstance(obj, list):
            for v in obj:
                yield from self._json(v, public, key)
        elif isinstance(obj, str):
            if obj in self.strings:
                yield "JSON string", f"{self.strings[obj]} = {obj!r}"
            for m in TOKEN.finditer(obj):
                hit = self._number(m.group())
                if hit:
                    yield "decimal text in a JSON string", hit
        elif isinstance(obj, bool) or obj is None:
            return
        elif isinstance(obj, int | float) and not public:
            if isinstance(obj, float) and not math.isfinite(obj):
                return
            hit = self._number(repr(obj) if isinstance(obj, float) else str(obj))
            if hit:
                yield "JSON number", hit

    # -- values in binary ----------------------------------------------------------------
    def _binary_text(self, b: np.ndarray, raw: bytes) -> Iterator[tuple[str, str, int]]:
        digit = ((b >= 48) & (b <= 57)) | (b == 46) | (b == 45)
        if len(b) < MIN_BINARY_DIGITS or not digit.any():
            return
        edges = np.flatnonzero(np.diff(np.concatenate([[0], digit.view(np.int8), [0]])))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            if end - start < MIN_BINARY_DIGITS:
                continue
            lo, hi = max(0, start - 1), min(len(raw), end + 1)
            for m in BTOKEN.finditer(raw, lo, hi):
                token = m.group().decode()
                if sum(c.isdigit() for c in token) >= MIN_BINARY_DIGITS:
                    hit = self._number(token)
                    if hit:
                        yield "decimal text in binary", hit, m.start()

    def scan(self, records: Iterable[tuple[str, str, bytes]], name: str = "") -> ScanReport:
        """Scan parsed transcript records; the report says what was found and how."""
        report = ScanReport(name, skipped=list(self.skipped))
        found: dict[int, dict[int, str]] = {w: {} for w in self.compare}
        allm: dict[int, list[np.ndarray]] = {}
        windows = {w: 0 for w in (8, *self.compare)}
        text_windows = string_windows = 0
        for index, (sender, tag, payload) in enumerate(records):
            kind, wire_tag = split_tag(tag)
            report.records += 1
            report.payload_bytes += len(payload)
            report.kinds[kind] = report.kinds.get(kind, 0) + 1
            for enc, what in self._text(tag):
                report.findings.append(Finding(index, sender, tag, f"{enc} in the tag", what))
            form, body = _classify(payload)
            if form == "json":
                public = bool(SHAPE_TAG.search(wire_tag))
                for enc, what in self._json(body, public):
                    report.findings.append(Finding(index, sender, tag, enc, what))
                continue
            if form == "text":
                for enc, what in self._text(body):
                    report.findings.append(Finding(index, sender, tag, enc, what))
                continue
            raw = bytes(body)
            b = np.frombuffer(raw, dtype=np.uint8)
            le32 = _words32(b)
            windows[8] += 2 * max(0, len(b) - 7)
            for matched, offsets, order in hits(b, self.exact, le32):
                for p, off in zip(matched.tolist(), offsets.tolist(), strict=True):
                    report.findings.append(Finding(index, sender, tag, f"64-bit {order}",
                                                   self.describe(p, 8), off))
            public_runs = wire_tag.split(":")[0].endswith("join-match")
            for width, (ps, real, _) in self.compare.items():
                if public_runs:
                    continue
                windows[width] += 2 * max(0, len(b) - width + 1)
                for matched, offsets, order in hits(b, ps, le32 if width == 4 else None):
                    if len(matched) == 0:
                        continue
                    allm.setdefault(width, []).append(matched)
                    mine = member(matched, real)
                    for p, off in zip(matched[mine].tolist(), offsets[mine].tolist(),
                                      strict=True):
                        found[width].setdefault(p, f"record {index} ({tag}) byte {off} {order}")
            for enc, what, off in self._binary_text(b, raw):
                report.findings.append(Finding(index, sender, tag, enc, what, off))
            text_windows += max(0, len(b) - MIN_BINARY_DIGITS + 1)
            for s, what in self.binary_strings:
                off = raw.find(s)
                if off >= 0:
                    report.findings.append(Finding(index, sender, tag, "string in binary",
                                                   f"{what} = {s!r}", off))
            string_windows += len(b)
        report.chance["64-bit"] = len(self.exact.values) * windows[8] / 2.0 ** 64
        report.chance["decimal text in binary"] = (
            2 * (len(self.ints) + len(self.decimals)) * text_windows / 256.0 ** MIN_BINARY_DIGITS)
        report.chance["strings in binary"] = (
            len(self.binary_strings) * string_windows / 256.0 ** MIN_BINARY_STRING)
        for width, (_, real, decoys) in self.compare.items():
            matched = np.unique(np.concatenate(allm.get(width, [np.zeros(0, np.uint64)])))
            per_pattern = -math.expm1(windows[width] * math.log1p(-(2.0 ** (-8 * width))))
            examples = [f"{self.describe(p, width)} at {where}"
                        for p, where in list(found[width].items())[:5]]
            report.comparisons.append(Comparison(
                width, int(member(matched, real).sum()), len(real) * per_pattern,
                [int(member(matched, d).sum()) for d in decoys],
                sum(len(d) for d in decoys) * per_pattern, examples))
        return report


# --------------------------------------------------------------------------- running
def run_queries(fed: Path, analyst: str, queries: Iterable[str], epsilon: float = 1.0
                ) -> list[veilql.Result]:
    """Run each query (delta 1e-6 for partition selection) in one session."""
    out = []
    with warnings.catch_warnings(), veilql.connect(fed, analyst=analyst) as session:
        warnings.simplefilter("ignore")
        for sql in queries:
            delta = 1e-6 if "branch" in sql else 0
            out.append(session.sql(sql, epsilon=epsilon, delta=delta))
    return out


def scan_directory(directory: Path, secrets: FederationSecrets,
                   receivers: Iterable[str]) -> dict[str, ScanReport]:
    """Scan ``<receiver>.bin`` of every receiver for the values it must not see."""
    reports = {}
    for receiver in receivers:
        scanner = Scanner(secrets.for_receiver(receiver), seed=len(reports))
        path = directory / f"{receiver}.bin"
        assert path.exists(), f"{receiver} recorded nothing"
        reports[receiver] = scanner.scan(read_records(path), receiver)
    return reports


def assert_clean(reports: dict[str, ScanReport]) -> None:
    """No receiver's transcript shows what it must not see; every scan did real work."""
    for name, report in reports.items():
        assert report.records and report.payload_bytes, f"{name}: empty transcript"
        assert not report.problems(), f"{name}: " + "\n".join(report.problems())
        assert report.comparisons, f"{name}: no 32-bit comparison ran ({report.skipped})"


def records_of(path: Path) -> list[tuple[str, str, str, bytes]]:
    """``(sender, kind, wire tag, payload)`` of every record of a transcript."""
    return [(f, *split_tag(t), p) for f, t, p in read_records(path)]


def _wait_for(predicate: Any, limit: float = 10.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def _fresh_federation(root: Path) -> Path:
    fed = oracle_federation(DEMO, root)
    shutil.rmtree(root / "ledgers", ignore_errors=True)
    return fed


@pytest.fixture(scope="module")
def demo_secrets() -> FederationSecrets:
    """Every party's values in the demo federation."""
    return collect_secrets(load_federation(DEMO / "federation.toml"))


# --------------------------------------------------------------------------- the scan
def test_the_scan_finds_planted_leaks(demo_secrets: FederationSecrets) -> None:
    """Control: each encoding is found when planted; random bytes of the same size are not."""
    secrets = demo_secrets.for_receiver("insurer")
    scanner = Scanner(secrets)
    rng = np.random.default_rng(7)
    noise = [("bank", f"share:{i}", rng.integers(0, 256, 400_000, dtype=np.uint8).tobytes())
             for i in range(8)]
    clean = scanner.scan(noise, "noise")
    assert not clean.problems(), clean.problems()
    assert clean.comparisons and clean.comparisons[0].real_hits > 0  # chance hits do happen
    assert any(s.startswith("16-bit") for s in clean.skipped)
    bank = demo_secrets.parties["bank"]
    key = max(k for k, w in bank.ints.items() if w.startswith("unit key") and k in scanner.ints)
    income = next(d for d, w in bank.decimals.items()
                  if "income" in w and d > 10_000 and d in scanner.decimals)
    fixed = int(income.scaleb(2))
    label = next(x for x, w in scanner.strings.items() if "branch" in w)
    pad = bytes(rng.integers(0, 256, 1000, dtype=np.uint8))
    planted = {
        "le64": pad + struct.pack("<q", key) + pad,
        "be64": pad[:3] + struct.pack(">q", fixed) + pad,
        "neg-be64": pad[:5] + struct.pack(">q", -key) + pad,
        "f64": pad[:1] + struct.pack("<d", float(income)) + pad,
        "text": f"customer {key} earns {income}".encode(),
        "json": json.dumps({"rows": [[key, float(income)]]}).encode(),
        "json-string": json.dumps({"note": f"id={key}"}).encode(),
        "json-key": json.dumps({str(key): 1}).encode(),
        "bin-text": pad + f" {fixed} ".encode() + pad,
        "bin-string": pad + label.encode() + pad,
        "tag/" + str(key): b"",
    }
    found = scanner.scan([("bank", tag, p) for tag, p in planted.items()], "planted")
    assert {f.tag for f in found.findings} == set(planted), [str(f) for f in found.findings]
    # A bulk leak at 32 bits, which chance alone cannot explain.
    keys = np.array(sorted(k for k, w in bank.ints.items() if w.startswith("unit key")))
    bulk = [("bank", "bulk", rng.permutation(keys[-1500:]).astype("<i4").tobytes()), *noise]
    leaky = scanner.scan(bulk, "bulk")
    assert [c.leak for c in leaky.comparisons] == [True], leaky.comparisons


def test_in_process_transcripts_show_no_other_partys_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_secrets: FederationSecrets) -> None:
    """The sample's cross-party queries, embedded: every party's and the analyst's
    transcripts hold no unit key or row value they must not see."""
    out = tmp_path / "t"
    fed = _fresh_federation(tmp_path / "fed")
    monkeypatch.setenv("VEIL_TRANSCRIPT_DIR", str(out))
    results = run_queries(fed, "oracle", CROSS, epsilon=HUGE_EPSILON)
    assert all(r.rows for r in results)
    assert any("branch" in r.columns for r in results)  # labels were released
    reports = scan_directory(out, demo_secrets, ["bank", "payments", "insurer", ANALYST])
    assert_clean(reports)
    releases = [(f, t) for f, k, t, _ in records_of(out / "analyst.bin") if t == "release"]
    assert sorted(releases) == sorted([(p, "release") for p in ("bank", "payments", "insurer")
                                       for _ in CROSS])


def test_in_process_errors_and_refusals_are_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A party that fails leaves an error record at every other endpoint; a party that
    refuses (budget) leaves its refusal in the others' transcripts and the analyst's."""
    from veilql.connectors.files import CsvConnector

    out = tmp_path / "t"
    fed = _fresh_federation(tmp_path / "fed")
    monkeypatch.setenv("VEIL_TRANSCRIPT_DIR", str(out))
    with warnings.catch_warnings(), veilql.connect(fed, analyst="bob") as session:
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        session.sql("SELECT COUNT(*) AS n FROM insurer.policies", epsilon=2.9)  # insurer only
        with pytest.raises(BudgetExceeded, match="insurer"):
            session.sql(CROSS[0], epsilon=0.5)
        refusal = [json.loads(p) for f, k, t, p in records_of(out / "analyst.bin")
                   if f == "insurer" and "/budget/" in t]
        assert refusal[-1]["ok"] is False
        assert any(f == "insurer" and "/budget/" in t and not json.loads(p)["ok"]
                   for f, k, t, p in records_of(out / "bank.bin"))

    def broken(self: Any, sql: str) -> Any:
        raise RuntimeError("the insurer's disk is on fire")

    monkeypatch.setattr(CsvConnector, "run", broken)
    with warnings.catch_warnings(), veilql.connect(fed, analyst="oracle") as session:
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        with pytest.raises(Exception, match="insurer|disk"):  # noqa: B017 - any failure
            session.sql("SELECT COUNT(*) AS n FROM bank.loans l JOIN insurer.policies p "
                        "ON l.customer_id = p.customer_id WHERE p.premium > 1234", epsilon=1.0)
    for receiver in ("bank", ANALYST):
        errors = [p for f, k, t, p in records_of(out / f"{receiver}.bin")
                  if (f, k, t) == ("insurer", "error", "insurer")]
        # The reason, as the session words it (it names the party; the engine's own text may
        # be kept back), is what every other endpoint was told.
        assert errors and b"insurer" in errors[-1], receiver
    assert not (out / "insurer.bin").read_bytes().count(b"!error/insurer")


# --------------------------------------------------------------------------- network
@pytest.fixture(scope="module", autouse=True)
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The transcript folder the nodes of ``cluster`` and this process's analyst write to
    (autouse, so it is set before ``cluster`` starts the nodes and they inherit it; the
    in-process tests set their own folder)."""
    out = tmp_path_factory.mktemp("served") / "t"
    mp = pytest.MonkeyPatch()
    mp.setenv("VEIL_TRANSCRIPT_DIR", str(out))
    try:
        yield out
    finally:
        mp.undo()


@pytest.mark.network
def test_served_transcripts_record_every_frame_and_show_no_other_partys_data(
        served: Path, cluster: Cluster, demo_secrets: FederationSecrets) -> None:  # noqa: F811
    """Three `veil serve` nodes: the query, set-up, progress, release, goodbye and error
    frames are all recorded, and no transcript shows another party's values."""
    parties = ("bank", "payments", "insurer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeEpsilonWarning)
        (result,) = run_queries(cluster.fed, "oracle", [CROSS[1]], epsilon=HUGE_EPSILON)
    assert result.rows
    # Every delivered frame type, at every endpoint.
    analyst = records_of(served / "analyst.bin")
    for p in parties:
        mine = [(k, t) for f, k, t, _ in analyst if f == p]
        assert ("hello", p) in mine and ("data", "progress") in mine, mine
        assert ("data", "release") in mine and ("bye", p) in mine, mine
        assert any(k == "data" and "/budget/" in t for k, t in mine) == (
            p in result.plan.charged)
    assert all(p == b"" for f, k, t, p in analyst if k == "bye")  # normal goodbyes
    for p in parties:
        node = records_of(served / f"{p}.bin")
        queries = [json.loads(x) for f, k, t, x in node if (f, k, t) == (ANALYST, "data", "query")]
        assert queries and queries[-1]["request"]["sql"] == CROSS[1]
        assert (ANALYST, "hello") in [(f, k) for f, k, _, _ in node]
        assert _wait_for(lambda p=p: (ANALYST, "bye") in [
            (f, k) for f, k, _, _ in records_of(served / f"{p}.bin")])
        assert {f for f, k, _, _ in node if k == "data"} >= set(parties) - {p} | {ANALYST}
    # The scan: nothing another party (or the analyst) must not see.
    assert_clean(scan_directory(served, demo_secrets, [*parties, ANALYST]))
    # A query the nodes refuse (their policy lacks a column the client's copy allows):
    # each node's abort reaches the analyst and the other node as an error goodbye.
    policies = cluster.root / "policies-client"
    shutil.copytree(cluster.root / "policies", policies, dirs_exist_ok=True)
    bank = policies / "bank.toml"
    bank.write_text(bank.read_text().replace(
        "[tables.loans.columns]\n",
        "[tables.loans.columns]\n"
        "loan_id = { role = \"value\", bounds = [0, 20000], decimals = 0 }\n"))
    client = cluster.root / "federation-client.toml"
    client.write_text(cluster.fed.read_text().replace('policies = "policies"',
                                                      'policies = "policies-client"'))
    before = len(analyst)
    sql = ("SELECT SUM(l.loan_id) AS s FROM bank.loans l JOIN insurer.policies p "
           f"ON l.customer_id = p.customer_id /* {uuid.uuid4().hex} */")
    with pytest.raises(VeilError, match="stopped the query") as refused:
        run_queries(client, "oracle", [sql])
    errors = [(f, json.loads(p)) for f, k, t, p in records_of(served / "analyst.bin")[before:]
              if k == "bye" and p]
    # The error the client reports came in a goodbye it recorded. (A node whose abort comes
    # after the client's own goodbye finds the client link closed: that goodbye is never
    # delivered, so it cannot be recorded.)
    assert any(refused.value.message.startswith(f"party {f!r}") for f, _ in errors), errors
    assert all(e["kind"] == "refused" and "loan_id" in e["reason"] for _, e in errors)

    def told(node: str) -> set[str]:  # the peers whose error goodbye ``node`` recorded
        return {f for f, k, _, p in records_of(served / f"{node}.bin")
                if k == "bye" and f != ANALYST and b"loan_id" in p}

    # The first node to give up tells both others (later ones skip a peer that already
    # said goodbye); its goodbye is recorded even where that session has already ended.
    assert _wait_for(lambda: any(all(x in told(n) for n in parties if n != x)
                                 for x in parties)), {n: told(n) for n in parties}
    assert_clean(scan_directory(served, demo_secrets, [*parties, ANALYST]))
