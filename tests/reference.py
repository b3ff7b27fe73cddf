"""Plain NumPy definitions of the ops: the oracle for every path.

Independent of numbaconv: padding is materialized with ``np.pad`` and the
convolution is a sum over kernel taps of strided slices, contracted over the
channels of each group with ``einsum``. Computed in the widest dtype (float64
or complex128).
"""

from __future__ import annotations

import itertools

import numpy as np

_NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def same_pads(sizes, kernel, stride, dilation):
    """(lo, hi) per dim for padding='same' (PyTorch at stride 1, JAX SAME otherwise)."""
    pads = []
    for n, k, s, d in zip(sizes, kernel, stride, dilation):
        eff = d * (k - 1) + 1
        if s == 1:
            total = eff - 1
        else:
            out = int(np.ceil(n / s))
            total = max((out - 1) * s + eff - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def conv_reference(x, w, bias=None, stride=None, pads=None, dilation=None, groups=1, mode="zeros"):
    """Batched N-d cross-correlation, PyTorch layout and semantics.

    x: (N, C_in, *sp); w: (C_out, C_in/groups, *k); pads: list of (lo, hi).
    """
    x = np.asarray(x)
    w = np.asarray(w)
    nd = w.ndim - 2
    stride = stride or [1] * nd
    dilation = dilation or [1] * nd
    pads = pads or [(0, 0)] * nd
    wide = np.complex128 if (np.iscomplexobj(x) or np.iscomplexobj(w)) else np.float64
    xp = np.pad(x.astype(wide), [(0, 0), (0, 0)] + [tuple(p) for p in pads], mode=_NP_PAD_MODE[mode])
    N, C = x.shape[:2]
    O = w.shape[0]
    Cg = C // groups
    Og = O // groups
    k = w.shape[2:]
    out_sp = [(xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    out = np.zeros((N, O, *out_sp), dtype=wide)
    for g in range(groups):
        xg = xp[:, g * Cg : (g + 1) * Cg]
        wg = w[g * Og : (g + 1) * Og].astype(wide)
        for tap in itertools.product(*(range(kk) for kk in k)):
            sl = tuple(
                slice(tap[i] * dilation[i], tap[i] * dilation[i] + (out_sp[i] - 1) * stride[i] + 1, stride[i])
                for i in range(nd)
            )
            patch = xg[(slice(None), slice(None)) + sl]  # (N, Cg, *out)
            out[:, g * Og : (g + 1) * Og] += np.einsum(
                "nc...,oc->no...", patch, wg[(slice(None), slice(None)) + tap]
            )
    if bias is not None:
        out += np.asarray(bias).astype(wide).reshape((1, O) + (1,) * nd)
    return out


def conv_transpose_reference(
    x, w, bias=None, stride=None, pads=None, dilation=None, groups=1, output_padding=None
):
    """Transposed convolution as a literal scatter loop (PyTorch semantics, zeros padding).

    x: (N, C_in, *sp); w: (C_in, C_out/groups, *k); pads: list of (lo, hi).
    Every input position ``i`` and tap ``k`` adds ``x[:, c, i] * w[c, :, k]``
    into output position ``i * stride + k * dilation - lo`` when that lies
    inside the output.
    """
    x = np.asarray(x)
    w = np.asarray(w)
    nd = w.ndim - 2
    stride = stride or [1] * nd
    dilation = dilation or [1] * nd
    pads = pads or [(0, 0)] * nd
    output_padding = output_padding or [0] * nd
    wide = np.complex128 if (np.iscomplexobj(x) or np.iscomplexobj(w)) else np.float64
    N, C = x.shape[:2]
    Cg = C // groups
    Og = w.shape[1]
    O = Og * groups
    k = w.shape[2:]
    in_sp = x.shape[2:]
    out_sp = [
        (in_sp[i] - 1) * stride[i]
        - pads[i][0]
        - pads[i][1]
        + dilation[i] * (k[i] - 1)
        + output_padding[i]
        + 1
        for i in range(nd)
    ]
    out = np.zeros((N, O, *out_sp), dtype=wide)
    xw = x.astype(wide)
    ww = w.astype(wide)
    for g in range(groups):
        cs = slice(g * Cg, (g + 1) * Cg)
        os_ = slice(g * Og, (g + 1) * Og)
        for pos in itertools.product(*(range(n) for n in in_sp)):
            for tap in itertools.product(*(range(kk) for kk in k)):
                p = [pos[i] * stride[i] + tap[i] * dilation[i] - pads[i][0] for i in range(nd)]
                if all(0 <= p[i] < out_sp[i] for i in range(nd)):
                    idx = (slice(None), os_) + tuple(p)
                    out[idx] += xw[(slice(None), cs) + pos] @ ww[(cs, slice(None)) + tap]
    if bias is not None:
        out += np.asarray(bias).astype(wide).reshape((1, O) + (1,) * nd)
    return out
