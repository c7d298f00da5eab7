"""A party's inputs to the secure part: its columns, and their shares at the compute parties.

Each data party turns its bounded local rows into the columns it shares (``local_columns``):
per join stage it holds a key of, its PRF tags of the unit keys; its factors; its
predicate atoms and operands for cross-party comparisons. A compute party shares its own
columns one at a time through the runtime (``receive_table``); a data party that does not
compute announces its shapes and chunk size, then sends shares from outside
(``announce_and_send``), one column at a time in chunks of rows.

Leakage: the shapes (units of each party, slots, aggregates, its cells) reach the compute
parties; every value is a uniformly random share. See docs/SECURITY.md.
"""

from __future__ import annotations

import json

import numpy as np

from veilql.engine.mpc.protocols.arith import share_from_outside
from veilql.engine.mpc.runtime import DEFAULT_CHUNK_WORDS, Runtime
from veilql.engine.mpc.shares import AShare
from veilql.engine.operators import factors as fac
from veilql.engine.operators import histogram
from veilql.engine.operators.join import SharedTable
from veilql.engine.operators.local import PartyRows
from veilql.engine.operators.memory import row_words, spans
from veilql.engine.operators.oblivious_join import is_oblivious
from veilql.engine.operators.oblivious_join import local_columns as oblivious_columns
from veilql.engine.operators.tags import new_key, tags
from veilql.engine.plan.nodes import Plan
from veilql.engine.transport.base import Transport
from veilql.errors import ProtocolError

CHUNK_KEY = "__chunk_words"  # in a non-computing party's shapes message: its chunk size


def local_columns(plan: Plan, me: str, rows: PartyRows, transport: Transport, qid: str,
                  words: int) -> dict[str, np.ndarray]:
    """This party's columns to share: join tags, factors, predicate atoms and operands.

    The factors are built in chunks of units of at most ``words`` words, over the cells
    that occur in ``rows`` when this party holds a private group key (``rows.cells`` is
    set here); the columns of ``rows`` shared as they are (atoms, operands) are taken out.
    """
    step = plan.step(me)
    fac.sparsify(plan, me, rows)  # only the cells that occur here, with a private key
    if is_oblivious(plan):  # padded or in cuckoo bins (operators/oblivious_join.py)
        return oblivious_columns(plan, me, rows, transport, qid)
    out: dict[str, np.ndarray] = {}
    for j, stage in enumerate(plan.joins):
        if me not in stage.key_parties:
            continue
        other = stage.key_parties[1] if stage.key_parties[0] == me else stage.key_parties[0]
        key_tag = f"{qid}/tagkey{j}"
        if me == stage.key_parties[0]:
            key = new_key()
            transport.send(other, key_tag, key)
        else:
            key = transport.recv(other, key_tag)
        out[f"tag{j}"] = tags(key, rows.keys)
    chains, _ = fac.expand_terms(plan)
    slot_level = plan.on_shares
    width = fac.factor_width(plan, me, rows, chains, slot_level=slot_level)
    if fac.separable(plan, me):  # values and cells apart: A + C words, not A x C
        out["V"] = fac.build_factors(plan, me, rows, chains, slot_level=False, cells=False,
                                     chunk_rows=max(1, words // width))
        out["H"] = fac.cell_indicator(plan, me, rows)
    else:
        out["F"] = fac.build_factors(plan, me, rows, chains, slot_level=slot_level,
                                     chunk_rows=max(1, words // width), collapse=True)
    out.update(histogram.digit_columns(plan, me, rows))  # a large COUNT(DISTINCT)'s digits
    for col in step.columns:
        if col.role in ("atom", "operand"):
            out[col.name] = rows.cols.pop(col.name) * rows.present
    return out


def announce_and_send(transport: Transport, plan: Plan, me: str,
                      columns: dict[str, np.ndarray], qid: str,
                      words: int = DEFAULT_CHUNK_WORDS) -> None:
    """A non-computing data party: tell the compute parties its shapes (and its chunk size),
    then send shares, a column at a time in chunks of at most ``words`` words."""
    shapes: dict[str, object] = {k: list(v.shape) for k, v in columns.items()}
    shapes[CHUNK_KEY] = int(words)
    for p in plan.compute:
        transport.send(p, f"{qid}/shape/{me}", json.dumps(shapes).encode())
    for name in list(columns):
        values = columns.pop(name)
        parts = spans(len(values), words // row_words(values.shape))
        for c, (lo, hi) in enumerate(parts):
            tag = f"{qid}/input/{me}/{name}" + (f"/{c}" if len(parts) > 1 else "")
            share_from_outside(transport, plan.compute, values[lo:hi], tag)
        del values


def receive_table(rt: Runtime, plan: Plan, party: str,
                  columns: dict[str, np.ndarray] | None, qid: str) -> SharedTable:
    """Shares of ``party``'s columns at this compute party.

    The owner's plain columns are shared one at a time and dropped from ``columns`` once
    shared (``Runtime.share`` chunks each); a non-computing party's shares arrive in the
    chunks it announced with its shapes.
    """
    if party in plan.compute:
        owner = rt.party_index(party)
        if rt.me == owner:
            assert columns is not None
            shapes = {k: list(v.shape) for k, v in columns.items()}
            msg = json.dumps(shapes).encode()
            for i in range(3):
                if i != owner:
                    rt.transport.send(rt.parties[i], f"{qid}/shape/{party}", msg)
        else:
            shapes = json.loads(rt.transport.recv(party, f"{qid}/shape/{party}", rt.timeout))
        cols = {}
        for name in sorted(shapes):
            values = columns.pop(name) if columns is not None and rt.me == owner else None
            cols[f"{party}.{name}"] = rt.share(owner, values, tuple(shapes[name]))
            del values
    else:
        shapes = json.loads(rt.transport.recv(party, f"{qid}/shape/{party}", rt.timeout))
        words = int(shapes.pop(CHUNK_KEY, 0)) or None
        cols = {f"{party}.{name}": receive_input(rt, party, f"{qid}/input/{party}/{name}",
                                                 tuple(shape), words)
                for name, shape in shapes.items()}
    n = {v.shape[0] for v in cols.values()}
    if len(n) != 1:
        raise ProtocolError(f"columns of {party} have different lengths {sorted(n)}")
    return SharedTable(n.pop(), cols)


def receive_input(rt: Runtime, party: str, tag: str, shape: tuple[int, ...],
                  words: int | None) -> AShare:
    """One column from a non-computing party, in the chunks of ``words`` words it sent."""
    if words is None or not shape:
        return rt.receive_input(party, tag, shape)
    parts = spans(shape[0], words // row_words(shape))
    if len(parts) == 1:
        return rt.receive_input(party, tag, shape)
    first = np.empty(shape, np.uint64)
    second = np.empty(shape, np.uint64)
    for c, (lo, hi) in enumerate(parts):
        part = rt.receive_input(party, f"{tag}/{c}", (hi - lo, *shape[1:]))
        first[lo:hi], second[lo:hi] = part.a, part.b
    return AShare(rt.me, first, second)
