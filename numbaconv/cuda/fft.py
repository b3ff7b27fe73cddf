"""Convolution by FFT on the GPU (``method="fft"``, device cuda), through
cuFFT as CuPy exposes it.

One tile (the whole padded input, cuFFT takes any length): the padded input
is gathered through the conv's tap maps (every padding mode), transformed
with ``cupyx``/``cupy.fft.rfftn`` (``fftn`` for complex), the channels are
contracted per frequency with ``cupy.einsum`` within each group, the inverse
transform's stride-1 correlation is read at the strided outputs and the bias
added. The transposed op correlates the zero-inserted input with the flipped
kernel (non-zero padding modes: extended output and fold, as the other
paths). Arrays stay on the device and are shared zero-copy with CuPy through
``__cuda_array_interface__``.

``supports()`` says why not when CuPy is missing or under the CUDA simulator
(which has no cuFFT). The development machines have no GPU: the algorithm is
tested under the simulator with NumPy standing in for CuPy (same API), not
on cuFFT itself.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .. import config
from ..common import dilated_flipped, flipped, gpu_roofline, transposed_as_conv
from ..shapes import conv_tap_map
from . import simulated


def supports(plan) -> str | None:
    if simulated():
        return "the CUDA simulator has no cuFFT"
    if importlib.util.find_spec("cupy") is None:
        return "cuFFT needs CuPy (pip install cupy-cuda12x); nvmath-python is not wired in yet"
    need = _bytes(plan)
    if need > config.workspace_bytes:
        return (
            f"one full-size transform needs {need} bytes, more than "
            f"config.workspace_bytes={config.workspace_bytes}"
        )
    return None


def _bytes(plan) -> int:
    """Device memory of one full-size transform of every signal and kernel."""
    lens = plan.padded_size if plan.op == "conv" else plan.extended_size
    m = int(np.prod(lens))
    item = plan.dtype.itemsize
    cg = plan.c_in // plan.groups
    return (plan.batch * (plan.c_in + plan.c_out) + plan.c_out * cg) * m * 2 * item


def workspace_bytes(plan) -> int:
    return _bytes(plan)


def cost_features(plan) -> dict[str, float]:
    return gpu_roofline("fft", plan)


def _correlate(cp, xp, w, stride, dilation, groups, real):
    """Stride-1 correlation of the padded input ``xp`` (N, C, L...) with ``w``,
    read at ``stride``: (N, O, out...)."""
    n, c = xp.shape[:2]
    o, cg = w.shape[:2]
    lens = xp.shape[2:]
    spans = [dilation[i] * (w.shape[2 + i] - 1) + 1 for i in range(3)]
    wd = dilated_flipped(w, dilation, cp.zeros)
    axes = (2, 3, 4)
    fwd, inv = (cp.fft.rfftn, cp.fft.irfftn) if real else (cp.fft.fftn, cp.fft.ifftn)
    X = fwd(xp, s=lens, axes=axes)
    K = fwd(wd, s=lens, axes=axes)
    f = X.shape[2:]
    X = X.reshape(n, groups, cg, -1)
    K = K.reshape(groups, o // groups, cg, -1)
    Y = cp.einsum("ngcf,gocf->ngof", X, K).reshape((n, o) + f)
    y = inv(Y, s=lens, axes=axes) if real else inv(Y, axes=axes)
    sl = tuple(slice(spans[i] - 1, lens[i], stride[i]) for i in range(3))
    return y[(slice(None), slice(None)) + sl]


def run(x5, w5, bias, plan, out5):
    import cupy as cp

    x = cp.asarray(x5)
    idx = []
    for i in range(3):
        lo, hi = plan.padding[i]
        f, _ = conv_tap_map(
            plan.in_size[i], plan.out_size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo, hi,
            plan.mode(i),
        )  # fmt: skip
        idx.append(f)
    xp = x
    for i, f in enumerate(idx):
        fi = cp.asarray(np.maximum(f, 0))
        mask = cp.asarray(f >= 0).reshape((-1,) + (1,) * (2 - i)).astype(x.dtype)
        xp = cp.take(xp, fi, axis=2 + i) * mask
    y = _correlate(cp, xp, cp.asarray(w5), plan.stride, plan.dilation, plan.groups, plan.dtype.kind == "f")
    out = cp.asarray(out5)
    out[...] = y[:, :, : plan.out_size[0], : plan.out_size[1], : plan.out_size[2]]
    if bias is not None:
        out += cp.asarray(bias).reshape(1, -1, 1, 1, 1)
    return out5


def run_transpose(x5, w5, bias, plan, out5):
    import cupy as cp

    from ._common import with_fold

    g = plan.groups
    w = flipped(transposed_as_conv(cp.asarray(w5), g))
    spans = [plan.dilation[i] * (plan.kernel[i] - 1) for i in range(3)]

    def body(x, b, target, lo, size):
        xs = cp.asarray(x)
        n = xs.shape[0]
        # the zero-inserted input, padded by span on both sides, cropped by lo
        full = [(plan.in_size[i] - 1) * plan.stride[i] + 1 + 2 * spans[i] for i in range(3)]
        u = cp.zeros((n, plan.c_in) + tuple(full), dtype=xs.dtype)
        u[
            :, :,
            spans[0] : spans[0] + (plan.in_size[0] - 1) * plan.stride[0] + 1 : plan.stride[0],
            spans[1] : spans[1] + (plan.in_size[1] - 1) * plan.stride[1] + 1 : plan.stride[1],
            spans[2] : spans[2] + (plan.in_size[2] - 1) * plan.stride[2] + 1 : plan.stride[2],
        ] = xs  # fmt: skip
        u = u[:, :, lo[0] :, lo[1] :, lo[2] :]
        y = _correlate(cp, u, w, (1, 1, 1), plan.dilation, g, plan.dtype.kind == "f")
        t = cp.asarray(target)
        t[...] = 0
        sl = tuple(slice(0, min(size[i], y.shape[2 + i])) for i in range(3))
        t[(slice(None), slice(None)) + sl] = y[(slice(None), slice(None)) + sl]
        t += cp.asarray(b).reshape(1, -1, 1, 1, 1)

    return with_fold(plan, x5, bias, out5, body)
