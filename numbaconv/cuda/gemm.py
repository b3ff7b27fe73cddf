"""im2col + GEMM on the GPU (``method="gemm"``, device cuda).

* **conv**: per group and chunk of output positions, an im2col kernel writes
  the patch matrix ``cols (Cg*taps, P)`` (a thread per element, inputs read
  through the tap maps), a tiled shared-memory GEMM kernel multiplies the
  group's weight ``(Og, Cg*taps)`` by it, and a store kernel adds the bias and
  writes ``(Og, P)`` into the output. Chunks of positions are as large as
  ``config.workspace_bytes`` allows.
* **conv_transpose**: per sample and group, the GEMM ``(Og*taps, Cg) @ x
  (Cg, positions)`` needs no lowering (the input is the matrix); a col2im
  kernel then gathers each output element's taps (no atomics).

The GEMM kernel: ``config.cuda_tile`` x ``config.cuda_tile`` (16) tiles of A
and B through shared memory, a thread per element of C.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .. import config
from ..common import fold_workspace, gpu_roofline
from ._common import bias_or_zeros, blocks_1d, conv_maps, gather_maps, numba_type, with_fold


@functools.cache
def gemm_kernel(dtype_str: str, tile: int):
    """C (M, N) = A (M, K) @ B (K, N) for one dtype and tile size."""
    nbt = numba_type(dtype_str)

    @cuda.jit
    def kernel(A, B, C):
        sa = cuda.shared.array((tile, tile), nbt)
        sb = cuda.shared.array((tile, tile), nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * tile + ty
        col = cuda.blockIdx.x * tile + tx
        M, K = A.shape
        N = B.shape[1]
        acc = nbt(0)
        for k0 in range(0, K, tile):
            sa[ty, tx] = A[row, k0 + tx] if row < M and k0 + tx < K else nbt(0)
            sb[ty, tx] = B[k0 + ty, col] if k0 + ty < K and col < N else nbt(0)
            cuda.syncthreads()
            for j in range(tile):
                acc += sa[ty, j] * sb[j, tx]
            cuda.syncthreads()
        if row < M and col < N:
            C[row, col] = acc

    return kernel


def matmul(A, B, C):
    t = int(config.cuda_tile)
    k = gemm_kernel(np.dtype(C.dtype).str, t)
    M, N = C.shape
    k[(-(-N // t), -(-M // t)), (t, t)](A, B, C)


@cuda.jit
def _im2col(x, cols, c0, p0, fd, fh, fw, geo, KD, KH, KW, OD, OH, OW):
    # cols[cl*taps + t, p] = x[n, c0 + cl, fd[...], fh[...], fw[...]] (0 outside),
    # p counting output positions (n, od, oh, ow) from p0
    K, P = cols.shape
    taps = KD * KH * KW
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < K * P:
        p = i % P
        k = i // P
        q = p0 + p
        ow = q % OW
        r = q // OW
        oh = r % OH
        r //= OH
        od = r % OD
        n = r // OD
        cl = k // taps
        t = k % taps
        kd = t // (KH * KW)
        kh = (t // KW) % KH
        kw = t % KW
        i0 = fd[od * geo[0] + kd * geo[1] + geo[2]]
        i1 = fh[oh * geo[3] + kh * geo[4] + geo[5]]
        i2 = fw[ow * geo[6] + kw * geo[7] + geo[8]]
        if i0 >= 0 and i1 >= 0 and i2 >= 0:
            cols[k, p] = x[n, c0 + cl, i0, i1, i2]
        else:
            cols[k, p] = 0
        i += step


@cuda.jit
def _store(res, out, bias, o0, p0):
    # out[n, o0 + o, s] = res[o, p] + bias[o0 + o] with (n, s) = divmod(p0 + p, S)
    M, P = res.shape
    S = out.shape[2]
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < M * P:
        p = i % P
        o = i // P
        q = p0 + p
        out[q // S, o0 + o, q % S] = res[o, p] + bias[o0 + o]
        i += step


def _chunk(plan) -> int:
    """Output positions per chunk: cols (K x P) + result (Og x P) within the budget."""
    cg = plan.c_in // plan.groups
    og = plan.c_out // plan.groups
    k = cg * plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    per = (k + og) * plan.dtype.itemsize
    total = plan.batch * plan.out_size[0] * plan.out_size[1] * plan.out_size[2]
    return int(min(total, config.workspace_bytes // per))


def _transpose_bytes(plan) -> int:
    cg = plan.c_in // plan.groups
    og = plan.c_out // plan.groups
    taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    s = plan.in_size[0] * plan.in_size[1] * plan.in_size[2]
    return (og * taps * s + og * taps * cg) * plan.dtype.itemsize + fold_workspace(plan)


def supports(plan) -> str | None:
    if plan.op == "conv":
        if _chunk(plan) < 1:
            return f"one patch-matrix column exceeds config.workspace_bytes={config.workspace_bytes}"
        return None
    need = _transpose_bytes(plan)
    if need > config.workspace_bytes:
        return (
            f"the GEMM result of one sample ({need} bytes) exceeds "
            f"config.workspace_bytes={config.workspace_bytes}"
        )
    return None


def workspace_bytes(plan) -> int:
    """The patch matrix and GEMM result of one chunk (conv), or of one sample
    and the transposed weights (transposed op)."""
    if plan.op == "conv":
        cg = plan.c_in // plan.groups
        k = cg * plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
        return _chunk(plan) * (k + plan.c_out // plan.groups) * plan.dtype.itemsize
    return _transpose_bytes(plan)


def cost_features(plan) -> dict[str, float]:
    return gpu_roofline("gemm", plan)


def run(x5, w5, bias, plan, out5):
    """Convolution by im2col + GEMM (device arrays, canonical 5-D)."""
    g = plan.groups
    cg = plan.c_in // g
    og = plan.c_out // g
    taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    k = cg * taps
    b = bias_or_zeros(bias, plan)
    maps = conv_maps(plan)
    od, oh, ow = plan.out_size
    total = plan.batch * od * oh * ow
    chunk = _chunk(plan)
    cols_buf = cuda.device_array(k * chunk, dtype=plan.dtype)
    res_buf = cuda.device_array(og * chunk, dtype=plan.dtype)
    w2 = w5.reshape(plan.c_out, k)
    out3 = out5.reshape(plan.batch, plan.c_out, od * oh * ow)
    for gi in range(g):
        wg = w2[gi * og : (gi + 1) * og]
        for p0 in range(0, total, chunk):
            p = min(chunk, total - p0)
            cols = cols_buf[: k * p].reshape(k, p)
            res = res_buf[: og * p].reshape(og, p)
            blocks, threads = blocks_1d(k * p)
            _im2col[blocks, threads](x5, cols, gi * cg, p0, *maps, *plan.kernel, od, oh, ow)
            matmul(wg, cols, res)
            blocks, threads = blocks_1d(og * p)
            _store[blocks, threads](res, out3, b, gi * og, p0)
    return out5


@cuda.jit
def _col2im(res, out, bias, n, o0, Og, fd, fh, fw, geo, KD, KH, KW, D, H, W):
    # out[n, o0 + og, q] = bias + sum over taps of res[og*taps + t, input position of (q, t)]
    OD, OH, OW = out.shape[2], out.shape[3], out.shape[4]
    taps = KD * KH * KW
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < Og * OD * OH * OW:
        ow = i % OW
        r = i // OW
        oh = r % OH
        r //= OH
        od = r % OD
        og = r // OD
        acc = bias[o0 + og]
        for kd in range(KD):
            i0 = fd[od * geo[0] + kd * geo[1] + geo[2]]
            if i0 < 0:
                continue
            for kh in range(KH):
                i1 = fh[oh * geo[3] + kh * geo[4] + geo[5]]
                if i1 < 0:
                    continue
                for kw in range(KW):
                    i2 = fw[ow * geo[6] + kw * geo[7] + geo[8]]
                    if i2 >= 0:
                        acc += res[og * taps + (kd * KH + kh) * KW + kw, (i0 * H + i1) * W + i2]
        out[n, o0 + og, od, oh, ow] = acc
        i += step


@cuda.jit
def _transposed_weight(w, wt, g, Cg):
    # wt[og*taps + t, cl] = w[g*Cg + cl, og, t]
    Og = w.shape[1]
    KD, KH, KW = w.shape[2], w.shape[3], w.shape[4]
    taps = KD * KH * KW
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < Og * taps * Cg:
        cl = i % Cg
        r = i // Cg
        t = r % taps
        og = r // taps
        wt[r, cl] = w[g * Cg + cl, og, t // (KH * KW), (t // KW) % KH, t % KW]
        i += step


def run_transpose(x5, w5, bias, plan, out5):
    """Transposed convolution by GEMM + col2im (device arrays, canonical 5-D)."""
    g = plan.groups
    cg = plan.c_in // g
    og = plan.c_out // g
    taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    d, h, w = plan.in_size
    s = d * h * w
    wts = []
    for gi in range(g):
        wt = cuda.device_array((og * taps, cg), dtype=plan.dtype)
        blocks, threads = blocks_1d(wt.size)
        _transposed_weight[blocks, threads](w5, wt, gi, cg)
        wts.append(wt)
    res = cuda.device_array((og * taps, s), dtype=plan.dtype)

    def body(x, b, target, lo, size):
        maps = gather_maps(plan, lo, size)
        x3 = x.reshape(x.shape[0], plan.c_in, s)
        for n in range(x.shape[0]):
            for gi in range(g):
                matmul(wts[gi], x3[n, gi * cg : (gi + 1) * cg], res)
                blocks, threads = blocks_1d(og * int(np.prod(size)))
                _col2im[blocks, threads](res, target, b, n, gi * og, og, *maps, *plan.kernel, d, h, w)

    return with_fold(plan, x5, bias, out5, body)
