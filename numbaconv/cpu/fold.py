"""The CPU fold of the transposed op's non-zero padding modes.

Those modes are the adjoint of conv with that mode: the result is computed
without padding onto an extended output of size ``plan.extended_size`` and
then folded back by ``_fold_kernel``: extended position ``q`` adds into output
``fold(q - lo)``, the same index map conv reads through (``shapes.tap_table``,
see :func:`numbaconv.common.fold_maps`). The extended buffer is chunked over
the batch within ``config.workspace_bytes`` (:func:`numbaconv.common.with_fold`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import common
from ..runtime import njit


@njit(parallel=True, cache=True)
def _fold_kernel(ext, bias, out, fd, fh, fw):
    # out[n, o] = bias[o] + sum over extended positions q of ext[n, o, q] at fold(q)
    N, O, ED, EH, EW = ext.shape
    for t in prange(N * O):
        o = t % O
        n = t // O
        out[n, o] = bias[o]
        for qd in range(ED):
            pd = fd[qd]
            if pd < 0:
                continue
            for qh in range(EH):
                ph = fh[qh]
                if ph < 0:
                    continue
                for qw in range(EW):
                    pw = fw[qw]
                    if pw >= 0:
                        out[n, o, pd, ph, pw] += ext[n, o, qd, qh, qw]


def with_fold(plan, x5, bias, out5, body):
    """:func:`numbaconv.common.with_fold` on host arrays."""
    maps = common.fold_maps(plan) if plan.folds else None  # (zeros mode never folds)
    return common.with_fold(
        plan,
        x5,
        bias,
        out5,
        body,
        empty=lambda shape: np.empty(shape, dtype=plan.dtype),
        zeros=lambda shape: np.zeros(shape, dtype=plan.dtype),
        fold=lambda ext, b, dst: _fold_kernel(ext, b, dst, *maps),
    )
