"""im2col + GEMM (conv) and GEMM + col2im (transposed), ``method="gemm"``.

Canonical 5-D arrays as everywhere: conv input ``(N, C_in, D, H, W)``, weight
``(C_out, C_in/groups, KD, KH, KW)``; transposed input ``(N, C_in, D, H, W)``,
weight ``(C_in, C_out/groups, KD, KH, KW)``.

**Conv.** The output rows (``n, od, oh``: ``N * OD * OH`` rows of ``OW``
positions) are processed in chunks. For each chunk and group, ``_im2col``
(njit-parallel over patch-matrix rows) lowers the input into a patch matrix
``cols`` of shape ``(K, rows * OW)`` with ``K = C_in/groups * KD * KH * KW``;
padding, stride, dilation and the padding modes enter through the tap tables
(``shapes.conv_tap_map``), so no padded copy is made. One BLAS GEMM ``W_g (Og x K)
@ cols`` gives the chunk's outputs, which ``_store`` writes into the result
with the bias. A 1x1, stride-1, unpadded conv needs no lowering: it is one
batched GEMM straight into the output.

**Transposed.** For a chunk of input rows, ``_gather_rows`` copies the group's
input into a ``(C_in/groups, rows * W)`` matrix, one GEMM with the transposed
weight ``(Og * KD * KH * KW, C_in/groups)`` gives every (output channel, tap)
contribution of each input position, and ``_col2im`` adds them into the output
at ``i * stride + k * dilation - lo``. ``_col2im`` is parallel over output
channels (a task owns ``out[:, o]``), so it needs no atomics and sums in a
fixed order. Non-zero padding modes go through the transposed op's extended
output and fold (:mod:`numbaconv.cpu.fold`).

**Memory.** The patch matrix and GEMM result for a chunk are sized so that
they fit ``config.workspace_bytes``; the buffers are allocated once per call
and reused for every chunk and group. If one output row (conv) or input row
(transposed) does not fit, :func:`supports` says so: a forced
``method="gemm"`` raises ``UnsupportedMethodError`` and ``auto`` takes another
method.

**BLAS.** The GEMM is NumPy's ``matmul`` with ``out=`` (OpenBLAS, all threads)
called between the njit-parallel lowering kernels. Measured here against
``np.dot`` inside an njit function (SciPy's OpenBLAS through
``cython_blas``) on resnet_3x3_c256 and resnet_1x1_c256: see the comment at
:func:`_matmul`.
"""

from __future__ import annotations

import numpy as np

from .. import config, costs
from ..common import WeightCache, fold_workspace
from ..runtime import njit, split_run
from ..shapes import conv_tap_maps, scatter_tap_maps
from .fold import with_fold


@njit(inline="always")
def _tap(f, g, o, k):
    # entry [o, k] of a compact tap map (shapes.conv_tap_map and friends); kept
    # here, not imported, because numba's cache keys on this file's contents
    return f[o * g[0] + k * g[1] + g[2]]


@njit(nogil=True, cache=True)
def _im2col(x, cols, r0, r1, c0, fd, gd, fh, gh, fw, gw, sw, dw, lo_w, k0, k1):
    # cols[k, (r - r0) * OW + ow] = x[n, c0 + cl, _tap(fd, gd, od, kd), _tap(fh, gh, oh, kh), _tap(fw, gw, ow, kw)]
    # (0 where a table says -1) for output rows r = (n, od, oh) in [r0, r1),
    # k = ((cl * KD + kd) * KH + kh) * KW + kw. The interior of a row reads
    # x[..., ow * sw + kw * dw - lo_w] directly (unsigned offsets: a vectorized
    # copy at stride 1); only the edges go through the W table.
    OD, KD = gd[4], gd[3]
    OH, KH = gh[4], gh[3]
    OW, KW = gw[4], gw[3]
    W = x.shape[4]
    us = np.uint64(sw)
    for k in range(k0, k1):
        kw = k % KW
        t1 = k // KW
        kh = t1 % KH
        t2 = t1 // KH
        kd = t2 % KD
        c = c0 + t2 // KD
        off = kw * dw - lo_w
        lo = min(max(0, -(off // sw)), OW)
        hi = max(min(OW, (W - 1 - off) // sw + 1), lo)
        ux = np.uint64(lo * sw + off)
        # (n, od, oh) of row r0, stepped row by row (no divisions per row)
        oh = r0 % OH
        od = (r0 // OH) % OD
        n = r0 // (OH * OD)
        for r in range(r0, r1):
            if r > r0:
                oh += 1
                if oh == OH:
                    oh = 0
                    od += 1
                    if od == OD:
                        od = 0
                        n += 1
            idd = _tap(fd, gd, od, kd)
            ih = _tap(fh, gh, oh, kh)
            base = (r - r0) * OW
            if idd < 0 or ih < 0:
                for ow in range(OW):
                    cols[k, base + ow] = 0
                continue
            ub = np.uint64(base + lo)
            for i in range(np.uint64(hi - lo)):
                cols[k, ub + i] = x[n, c, idd, ih, ux + i * us]
            for ow in range(lo):
                iw = _tap(fw, gw, ow, kw)
                cols[k, base + ow] = x[n, c, idd, ih, iw] if iw >= 0 else 0
            for ow in range(hi, OW):
                iw = _tap(fw, gw, ow, kw)
                cols[k, base + ow] = x[n, c, idd, ih, iw] if iw >= 0 else 0


@njit(nogil=True, cache=True)
def _store(res, out, bias, r0, r1, o0, t0, t1):
    # out[n, o0 + o, od, oh, :] = res[o, (r - r0) * OW + :] + bias[o0 + o]
    # for tasks t = o * (r1 - r0) + (r - r0) in [t0, t1): a task's row of
    # ``res`` follows the last one's, as its output row does within a plane
    OD, OH, OW = out.shape[2], out.shape[3], out.shape[4]
    nr = r1 - r0
    for t in range(t0, t1):
        o = t // nr
        r = r0 + t - o * nr
        oh = r % OH
        od = (r // OH) % OD
        n = r // (OH * OD)
        bv = bias[o0 + o]
        base = (r - r0) * OW
        for ow in range(OW):
            out[n, o0 + o, od, oh, ow] = res[o, base + ow] + bv


@njit(nogil=True, cache=True)
def _gather_rows(x, xm, r0, r1, c0, t0, t1):
    # xm[cl, (r - r0) * W + iw] = x[n, c0 + cl, id, ih, iw] for input rows r = (n, id, ih),
    # tasks t = (r - r0) * Cg + cl in [t0, t1)
    D, H, W = x.shape[2], x.shape[3], x.shape[4]
    Cg = xm.shape[0]
    for t in range(t0, t1):
        cl = t % Cg
        r = r0 + t // Cg
        ih = r % H
        idd = (r // H) % D
        n = r // (H * D)
        base = (r - r0) * W
        for iw in range(W):
            xm[cl, base + iw] = x[n, c0 + cl, idd, ih, iw]


@njit(nogil=True, cache=True)
def _col2im(cols, out, r0, r1, o0, KD, KH, KW, D, H, W, fd, gd, fh, gh, sw, dw, lo_w, oa, ob):
    # out[n, o0 + o, _tap(fd, gd, id, kd), _tap(fh, gh, ih, kh), iw * sw + kw * dw - lo_w] +=
    #     cols[(o * KD + kd) * KH + kh) * KW + kw, (r - r0) * W + iw]
    # for input rows r = (n, id, ih) in [r0, r1) and output channels o in
    # [oa, ob): a thread owns whole output channels, so no two write one element
    OW = out.shape[4]
    for o in range(oa, ob):
        for r in range(r0, r1):
            ih = r % H
            idd = (r // H) % D
            n = r // (H * D)
            base = (r - r0) * W
            for kd in range(KD):
                pd = _tap(fd, gd, idd, kd)
                if pd < 0:
                    continue
                for kh in range(KH):
                    ph = _tap(fh, gh, ih, kh)
                    if ph < 0:
                        continue
                    for kw in range(KW):
                        k = ((o * KD + kd) * KH + kh) * KW + kw
                        off = kw * dw - lo_w
                        # inputs whose output iw * sw + off lies in [0, OW)
                        lo = min(max(0, -(off // sw)), W)
                        hi = max(min(W, (OW - 1 - off) // sw + 1), lo)
                        for iw in range(lo, hi):
                            out[n, o0 + o, pd, ph, iw * sw + off] += cols[k, base + iw]


def _matmul(a, b, out):
    # NumPy's matmul (OpenBLAS, multi-threaded) with a preallocated ``out``.
    # Measured on resnet_3x3_c256 / resnet_1x1_c256 (float32, 2 threads):
    # within noise of np.dot called inside an njit function (same OpenBLAS
    # kernels through SciPy), and it needs no compiled signature per dtype.
    # NaN/Inf propagate as in PyTorch, without NumPy's floating-point warnings
    with np.errstate(all="ignore"):
        np.matmul(a, b, out=out)


def _is_pointwise(plan) -> bool:
    return (
        plan.kernel == (1, 1, 1)
        and plan.stride == (1, 1, 1)
        and all(p == (0, 0) for p in plan.padding)
        and plan.padding_mode == "zeros"
    )


def _row_bytes(plan) -> int:
    """Workspace bytes per chunk row: patch matrix plus GEMM result (or input copy)."""
    cg = plan.c_in // plan.groups
    og = plan.c_out // plan.groups
    taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    if plan.op == "conv":
        return (cg * taps + og) * plan.out_size[2] * plan.dtype.itemsize
    return (cg + og * taps) * plan.in_size[2] * plan.dtype.itemsize


def _total_rows(plan) -> int:
    size = plan.out_size if plan.op == "conv" else plan.in_size
    return plan.batch * size[0] * size[1]


def chunk_rows(plan) -> int:
    """Rows per chunk within ``config.workspace_bytes`` (0: not even one fits)."""
    return min(_total_rows(plan), config.workspace_bytes // _row_bytes(plan))


# a sample's GEMM writes its output in place when its output planes hold at
# least this many positions; below, one GEMM over the chunk's samples and a
# copy into the output run faster (a BLAS call per 7x7 sample is short)
_IN_PLACE_POSITIONS = 256


def sample_chunk(plan) -> int:
    """Samples per chunk when each sample's GEMM writes straight into the
    output (its patch matrix, plus a row of ones that carries the bias, within
    ``config.workspace_bytes``); 0 when that does not pay or one sample's
    matrix does not fit (then the rows are chunked with a result buffer)."""
    positions = int(np.prod(plan.out_size))
    if plan.op != "conv" or positions < _IN_PLACE_POSITIONS:
        return 0
    k = plan.c_in // plan.groups * plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    per_sample = (k + 1) * positions * plan.dtype.itemsize
    return min(plan.batch, config.workspace_bytes // per_sample)


def supports(plan) -> str | None:
    """None when ``method="gemm"`` can run the plan, else why not."""
    if plan.op == "conv" and _is_pointwise(plan):
        return None
    if _total_rows(plan) and chunk_rows(plan) < 1:
        what = "output row" if plan.op == "conv" else "input row"
        return (
            f"the patch matrix of one {what} needs {_row_bytes(plan)} bytes, more than "
            f"config.workspace_bytes={config.workspace_bytes}"
        )
    return None


def workspace_bytes(plan) -> int:
    """Extra memory a call allocates for this plan: the patch matrix and GEMM
    result of a chunk (0 for a pointwise conv), and the transposed op's
    extended buffer for the non-zero padding modes."""
    if plan.op == "conv" and _is_pointwise(plan):
        return 0
    samples = sample_chunk(plan)
    if samples:
        k = plan.c_in // plan.groups * plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
        return samples * (k + 1) * int(np.prod(plan.out_size)) * plan.dtype.itemsize
    return max(chunk_rows(plan), 0) * _row_bytes(plan) + fold_workspace(plan)


_THIN = 16  # a GEMM with a dimension below this runs far below the BLAS peak
_SHORT_K = 96  # and one with a reduction shorter than this below it


def cost_features(plan) -> dict[str, float]:
    """Operation counts of one call (float32 units): elements lowered into the
    patch matrix and the rows they are copied in, GEMM FLOPs by how close to the BLAS peak they run (a
    dimension below 16 "thin", a reduction below 96 "short", else full
    speed) and GEMM calls."""
    cg = plan.c_in // plan.groups
    og = plan.c_out // plan.groups
    taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    if plan.op == "conv":
        positions = plan.batch * int(np.prod(plan.out_size))
        lowered = 0.0 if _is_pointwise(plan) else float(positions * plan.c_in * taps)
        rows = lowered / plan.out_size[2]
        m, k = og, cg * taps
    else:  # the patch matrix is (Og * taps) x positions of the input, then col2im
        lowered = float(plan.batch * int(np.prod(plan.in_size)) * plan.c_out * taps)
        rows = lowered / plan.in_size[2]
        m, k = og * taps, cg
    flops = float(plan.flops)
    thin = min(m, k) < _THIN
    short = not thin and k < _SHORT_K
    f = {
        "call": 1.0,
        "outputs": float(plan.batch * plan.c_out * int(np.prod(plan.out_size))),
        "lowered": lowered,
        # rows of the lowering's copies (a set-up each: on 7-wide rows the
        # lowering ran ~6x its per-element rate)
        "lowered_rows": rows,
        "gemm_flops": flops if not (thin or short) else 0.0,
        "gemm_flops_short": flops if short else 0.0,
        "gemm_flops_thin": flops if thin else 0.0,
        "gemm_calls": float(plan.groups * max(1, plan.batch)),
    }
    return costs.per_dtype(f, plan, fixed=("call", "gemm_calls"))


def run(x5, w5, bias, plan, out5):
    """Convolution by im2col + GEMM (canonical 5-D arrays, see the module doc)."""
    g = plan.groups
    cg = plan.c_in // g
    og = plan.c_out // g
    if _is_pointwise(plan):
        # plain batched GEMM: out[n, g] (Og, P) = W_g (Og, Cg) @ x[n, g] (Cg, P)
        p = plan.in_size[0] * plan.in_size[1] * plan.in_size[2]
        wg = w5.reshape(g, og, cg)
        _matmul(wg, x5.reshape(plan.batch, g, cg, p), out5.reshape(plan.batch, g, og, p))
        if bias is not None:  # a pass over the output: not for a zero bias that is not there
            out5 += bias.reshape(1, plan.c_out, 1, 1, 1)
        return out5
    if sample_chunk(plan) and out5.flags.c_contiguous:
        return _run_in_place(x5, w5, bias, plan, out5)
    if bias is None:
        bias = np.zeros(plan.c_out, dtype=plan.dtype)
    rows = chunk_rows(plan)
    if rows < 1:
        raise ValueError(supports(plan))
    k = cg * plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    ow = plan.out_size[2]
    cols_buf = np.empty(k * rows * ow, dtype=plan.dtype)
    res_buf = np.empty(og * rows * ow, dtype=plan.dtype)
    wmat = [np.ascontiguousarray(w5[i * og : (i + 1) * og].reshape(og, k)) for i in range(g)]
    maps = conv_tap_maps(plan)
    total = _total_rows(plan)
    for r0 in range(0, total, rows):
        r1 = min(r0 + rows, total)
        m = (r1 - r0) * ow
        cols = cols_buf[: k * m].reshape(k, m)
        res = res_buf[: og * m].reshape(og, m)
        for i in range(g):
            _lower(x5, cols, r0, r1, i * cg, maps, plan)
            _matmul(wmat[i], cols, res)
            split_run(_store, og * (r1 - r0), res, out5, bias, r0, r1, i * og, work=res.size)
    return out5


def _lower(x5, cols, r0, r1, c0, maps, plan) -> None:
    """The patch matrix rows ``[0, len(cols))`` of output rows ``[r0, r1)``
    and the group whose first input channel is ``c0``."""
    split_run(_im2col, cols.shape[0], x5, cols, r0, r1, c0, *maps, plan.stride[2], plan.dilation[2],
              plan.padding[2][0], work=cols.size)  # fmt: skip


def _run_in_place(x5, w5, bias, plan, out5):
    """:func:`run` for whole samples a chunk: the GEMM of each sample and
    group writes ``out[n, group]`` (a ``(Og, positions)`` matrix) in place, no
    result buffer or copy; the bias rides in the GEMM as a row of ones in the
    patch matrix against a bias column of the weight."""
    g, n_all = plan.groups, plan.batch
    cg, og = plan.c_in // g, plan.c_out // g
    k = cg * plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    kb = k + (bias is not None)
    pos = int(np.prod(plan.out_size))
    samples = sample_chunk(plan)
    cols_buf = np.empty(kb * samples * pos, dtype=plan.dtype)
    wmat = []
    for i in range(g):
        wi = np.empty((og, kb), dtype=plan.dtype)
        wi[:, :k] = w5[i * og : (i + 1) * og].reshape(og, k)
        if bias is not None:
            wi[:, k] = bias[i * og : (i + 1) * og]
        wmat.append(wi)
    maps = conv_tap_maps(plan)
    per = plan.out_size[0] * plan.out_size[1]  # output rows of a sample
    target = out5.reshape(n_all, g, og, pos)  # out5 is C-contiguous: a view
    for n0 in range(0, n_all, samples):
        n1 = min(n0 + samples, n_all)
        m = (n1 - n0) * pos
        cols = cols_buf[: kb * m].reshape(kb, m)
        cols[k:] = 1  # the bias's row of ones (none without a bias)
        for i in range(g):
            _lower(x5, cols[:k], n0 * per, n1 * per, i * cg, maps, plan)
            # (S, kb, pos) views of the patch matrix: one BLAS call per sample
            _matmul(wmat[i], cols.reshape(kb, n1 - n0, pos).transpose(1, 0, 2), target[n0:n1, i])
    return out5


_TRANSPOSED = WeightCache("weight_cache_bytes")


def _transposed_weights(w5, groups: int) -> tuple:
    """Per group, the transposed op's weight ``(Cg, Og * taps)`` transposed
    to ``(Og * taps, Cg)``, contiguous; kept between calls for the weight
    (the strided copy of a 2 MB weight took ~0.8 ms a call)."""
    cg = w5.shape[0] // groups
    rest = w5[0].size

    def make():
        return tuple(
            np.ascontiguousarray(w5[i * cg : (i + 1) * cg].reshape(cg, rest).T) for i in range(groups)
        )

    return _TRANSPOSED.get(w5, ("gemm-transposed", groups), make)


def run_transpose(x5, w5, bias, plan, out5):
    """Transposed convolution by GEMM + col2im (canonical 5-D arrays, see the module doc)."""
    g = plan.groups
    cg = plan.c_in // g
    og = plan.c_out // g
    kd, kh, kw = plan.kernel
    taps = kd * kh * kw
    d, h, w = plan.in_size
    wmat = _transposed_weights(w5, g)
    rows = chunk_rows(plan)
    if rows < 1 and _total_rows(plan):
        raise ValueError(supports(plan))
    rows = max(rows, 1)
    xm_buf = np.empty(cg * rows * w, dtype=plan.dtype)
    cols_buf = np.empty(og * taps * rows * w, dtype=plan.dtype)

    def body(x, b, target, lo, size):
        target[...] = b.reshape(1, -1, 1, 1, 1)
        fd, gd, fh, gh = scatter_tap_maps(plan, lo, size)[:4]
        total = x.shape[0] * d * h
        for r0 in range(0, total, rows):
            r1 = min(r0 + rows, total)
            m = (r1 - r0) * w
            xm = xm_buf[: cg * m].reshape(cg, m)
            cols = cols_buf[: og * taps * m].reshape(og * taps, m)
            for i in range(g):
                split_run(_gather_rows, cg * (r1 - r0), x, xm, r0, r1, i * cg, work=xm.size)
                _matmul(wmat[i], xm, cols)
                geo = (kd, kh, kw, d, h, w, fd, gd, fh, gh, plan.stride[2], plan.dilation[2], lo[2])
                split_run(_col2im, og, cols, target, r0, r1, i * og, *geo, work=cols.size)

    return with_fold(plan, x5, bias, out5, body)
