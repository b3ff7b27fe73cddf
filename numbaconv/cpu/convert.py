"""Element-wise stores of the filter front-ends (numbaconv.ndimage): a float
result into an integer output as SciPy's C loops store a double, in one
parallel pass (NumPy's truncate, widen to int64 and narrow took four passes
and an int64 temporary: most of a uint8 image filter's time)."""

from __future__ import annotations

import numpy as np
from numba import prange

from ..runtime import njit


@njit(cache=True, parallel=True)
def truncate_into(y, out):
    """``out[i] = int(y[i])``: truncated toward zero, wrapped in ``out``'s
    integer dtype (``y`` and ``out`` flat, of equal length)."""
    for i in prange(y.shape[0]):
        out[i] = np.int64(y[i])
