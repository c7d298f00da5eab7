"""The part of OpenDP's API that VeilQL uses, imported without OpenDP's prelude.

``import opendp.prelude as dp`` also imports OpenDP's extras (scikit-learn, numpy, Polars and
ibis helpers), about 0.1-0.2 s on every process that plans or runs a query; VeilQL needs
none of them. This module gives the same names under the same ``dp.`` spelling::

    from veilql.engine.dp import opendp_api as dp
    dp.m.make_laplace(...)

>>> from veilql.engine.dp import opendp_api as dp
>>> callable(dp.m.make_laplace) and callable(dp.c.make_composition)
True
"""

from __future__ import annotations

import opendp.combinators as c
import opendp.measurements as m
from opendp.accuracy import discrete_gaussian_scale_to_accuracy
from opendp.domains import atom_domain, vector_domain
from opendp.measures import zero_concentrated_divergence
from opendp.metrics import absolute_distance, l1_distance, l2_distance, symmetric_distance
from opendp.mod import Measurement, OpenDPException, enable_features

__all__ = [
    "Measurement", "OpenDPException", "absolute_distance", "atom_domain", "c",
    "discrete_gaussian_scale_to_accuracy", "enable_features", "l1_distance", "l2_distance",
    "m", "symmetric_distance", "vector_domain", "zero_concentrated_divergence",
]
