"""Plans of recently compiled SQL, kept by whoever compiled them (a session, a node).

Planning a one-party query takes about 10 ms (parse, bind, the rewrite passes, sqlglot's
transpile of the local SQL), done by the analyst's session and again by every
participating node: as long as the engine's own aggregate. ``compile_plan`` is a pure
function of the SQL, the requested cost and mechanism, the catalog it is given and the
federation object (its policies are loaded once and frozen; a changed policy file means a
new ``Federation``, hence a new cache), so a repeated query may reuse its plan.

Each owner keeps its own cache: a node still compiles every query itself (nothing another
party planned is trusted) and agrees on the plan's hash with the others as before. A node
keys its entries by analyst too, so its planning time shows nothing of which SQL another
analyst asked (its engine-side caches are per party: docs/SECURITY.md, "Timing").
Refusals are not kept (compiling again raises them again), and a hit repeats the
large-epsilon warning a fresh compile would give.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping

from veilql.engine.dp.calibrate import check_budget
from veilql.engine.plan.nodes import Plan
from veilql.engine.rewrite import compile_plan
from veilql.errors import QueryError
from veilql.policies.model import Federation

#: Plans kept per cache (least recently used dropped first).
PLANS_KEPT = 64


class PlanCache:
    """``compile_plan`` for one federation object, with the last ``size`` plans kept.

    >>> from tests.sql_fixtures import federation
    >>> cache = PlanCache(federation())
    >>> a = cache.compile("SELECT COUNT(*) FROM bank.customers", epsilon=1.0)
    >>> cache.compile("SELECT COUNT(*) FROM bank.customers", epsilon=1.0) is a
    True
    >>> cache.compile("SELECT COUNT(*) FROM bank.customers", epsilon=0.5) is a
    False
    """

    def __init__(self, federation: Federation, size: int = PLANS_KEPT) -> None:
        self.federation = federation
        self.size = size
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, sql: str, *, epsilon: float | None = None, delta: float | None = None,
                mechanism: str = "auto",
                catalog: Mapping[str, Mapping[str, list[str]]] | None = None,
                analyst: str = "") -> Plan:
        """The plan of ``sql`` as ``compile_plan`` makes it (kept, or compiled now)."""
        frozen = None if catalog is None else json.dumps(catalog, sort_keys=True)
        key = (sql, epsilon, delta, mechanism, frozen, analyst)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
        if plan is not None:
            # the large-epsilon warning a compile would give (the request was checked
            # when the plan was made; plan.delta is the charged delta, which may be
            # smaller than any delta a request may name)
            try:
                check_budget(plan.epsilon, 0)
            except QueryError:
                pass  # a charged epsilon below a request's range: the warning is all we want
            return plan
        plan = compile_plan(sql, self.federation, epsilon=epsilon, delta=delta,
                            mechanism=mechanism, catalog=catalog)
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)
        return plan
