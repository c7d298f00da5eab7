"""connectors.base.column_to_numpy: what pyarrow's to_numpy gives, without importing pandas."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from veilql.connectors.base import column_to_numpy

CASES = [
    pa.chunked_array([[1, 2], [], [3, 4, 5]], pa.int64()),
    pa.chunked_array([[1, 2, 3]], pa.int32()).slice(1),  # an offset into the buffer
    pa.chunked_array([[0.5, -1.0], [2.25]], pa.float64()),
    pa.chunked_array([[1, None, 3]], pa.int64()),  # NULLs: pyarrow's own conversion
    pa.chunked_array([], pa.int64()),
    pa.chunked_array([["a", "b"]], pa.string()),
    pa.array([7, 8, 9], pa.uint16()),
]


@pytest.mark.parametrize("col", CASES, ids=[str(c.type) + str(len(c)) for c in CASES])
def test_same_as_pyarrow(col: pa.ChunkedArray) -> None:
    got, want = column_to_numpy(col), col.to_numpy(zero_copy_only=False)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_numbers_from_duckdb_need_no_pandas() -> None:
    code = ("import sys, duckdb\nfrom veilql.connectors.base import column_to_numpy\n"
            "t = duckdb.connect().sql('SELECT range::BIGINT AS x, range / 2 AS y FROM "
            "range(100000)').to_arrow_table()\n"
            "assert column_to_numpy(t.column('x')).sum() == 4999950000\n"
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
