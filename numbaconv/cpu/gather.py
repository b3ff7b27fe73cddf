"""Transposed convolution by gathering on the CPU (``method="gather"``).

Every output element sums the inputs that reach it. Real dtypes split the
output by phase: with stride ``s`` the outputs ``o`` of one residue ``o mod
s`` (per dim) gather the same taps ``k`` (those with ``k * dilation``
of that residue), from inputs one apart. Each phase is a stride-1 conv of
the undilated input with a sub-kernel of those taps, reversed (dilation
``dilation / gcd(stride, dilation)``, a padding that may be negative:
:func:`phase_plans`), run on the implicit-GEMM direct path
(:mod:`numbaconv.cpu.igemm`) straight into the output's phase, a strided
view (no zero-inserted input, no scatter, no interleaving copy): up to
``s^d`` convs doing exactly the multiplications the op needs, all tasks of
one parallel region (:func:`numbaconv.cpu.igemm.run_phases`). Phases no tap
reaches (a stride above the kernel's span) are not planned; they hold the
bias.

Complex dtypes, and a plan whose phases do not fit ``config.workspace_bytes``
there, run the channels-last kernel of :mod:`numbaconv.cpu.direct` with gather
maps (output position x tap -> input index or -1, ``shapes.gather_tap_map``),
register tiles of two output pixels one stride apart, and for one group with
dilation 1 the taps of each phase as one contiguous run (:func:`_gather_runs`).
Non-zero padding modes go through the extended output and its fold
(:mod:`.fold`) on either path.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np

from .. import config, costs
from ..common import WeightCache, fold_chunk, fold_workspace, transposed_as_conv
from ..runtime import num_threads as threads_now
from ..shapes import gather_tap_maps
from . import direct, igemm, winograd
from .fold import with_fold


def _phase_dim(stride, dilation, kernel, lo, t0):
    """One dim of the phase whose first target index is ``t0 < stride``
    (full positions ``t0 + lo + j * stride``): (its taps from the last, the
    sub-kernel dilation, the sub-conv low padding). Output ``t0 + stride * j``
    gathers tap ``taps[m]`` from input ``j - pad + m * dil``."""
    residue = (t0 + lo) % stride
    taps = tuple(k for k in range(kernel - 1, -1, -1) if (k * dilation - residue) % stride == 0)
    if not taps:
        return taps, 1, 0
    first = (t0 + lo - taps[0] * dilation) // stride  # exact: both sides are the residue
    return taps, dilation // math.gcd(stride, dilation), -first


def _tapped(plan, i: int, lo: int, size: int) -> list[int]:
    """The first target indices ``t0 < min(stride, size)`` of dim ``i`` whose
    phase some tap reaches (at most ``min(kernel, stride)`` of them)."""
    s = plan.stride[i]
    return sorted(
        t for t in {(k * plan.dilation[i] - lo) % s for k in range(plan.kernel[i])} if t < min(s, size)
    )


def untapped(plan, lo, size) -> bool:
    """Whether some output of the region ``[lo, lo + size)`` is in a phase no
    tap reaches (a stride above the kernel's span): those hold the bias."""
    return any(len(_tapped(plan, i, lo[i], size[i])) < min(plan.stride[i], size[i]) for i in range(3))


@functools.lru_cache(maxsize=64)
def phase_plans(plan, batch: int, lo, size) -> tuple:
    """The phases of a transposed op's output region ``[lo, lo + size)`` (full
    positions) that some tap reaches: ``(start, conv plan, taps)`` per phase,
    ``start`` its first target index per dim, the plan a stride-1 conv of the
    input, ``taps`` the kernel indices of its sub-kernel per dim (at most
    ``min(kernel, stride, size)`` phases per dim; the others: :func:`untapped`)."""
    dims = [
        [
            (t0,) + _phase_dim(plan.stride[i], plan.dilation[i], plan.kernel[i], lo[i], t0)
            for t0 in _tapped(plan, i, lo[i], size[i])
        ]
        for i in range(3)
    ]
    out = []
    for ps in itertools.product(*dims):
        start = tuple(p[0] for p in ps)
        taps = tuple(p[1] for p in ps)
        count = tuple(-(-(size[i] - start[i]) // plan.stride[i]) for i in range(3))
        kernel = tuple(len(t) for t in taps)
        dil = tuple(p[2] for p in ps)
        pad = tuple(
            (p[3], count[i] + dil[i] * (kernel[i] - 1) - plan.in_size[i] - p[3]) for i, p in enumerate(ps)
        )
        sub = dataclasses.replace(
            plan, op="conv", batch=batch, kernel=kernel, out_size=count, stride=(1, 1, 1),
            dilation=dil, padding=pad, padding_mode="zeros", output_padding=(0, 0, 0),
        )  # fmt: skip
        out.append((start, sub, taps))
    return tuple(out)


def _phased(plan) -> bool:
    """Whether the plan runs as phases on the implicit-GEMM path."""
    return plan.dtype.kind == "f" and _fit(plan, *igemm.setting(plan.dtype))


@functools.lru_cache(maxsize=64)
def _fit(plan, *setting) -> bool:
    # every phase fits igemm's budget (kept per setting: a phase's geometry depends on them)
    share = _share(_phases(plan))
    return all(igemm.fits(sub, share) for _, sub, _ in _phases(plan))


def _share(phases) -> int:
    """The phases run together (their tasks in one parallel region)."""
    return max(1, len(phases))


def _region(plan):
    """The output region the body computes: the output itself (zeros mode)
    or the extended output the fold adds back."""
    if plan.folds:
        return (0, 0, 0), plan.extended_size
    return plan.padding_lo, plan.out_size


def supports(plan) -> str | None:
    """None when ``method="gather"`` can run the plan, else why not."""
    if _phased(plan):
        return None
    if not direct.channels_last_fits(plan):
        return (
            f"its channels-last copy of one input sample ({direct.sample_bytes(plan)} bytes) exceeds "
            f"config.workspace_bytes={config.workspace_bytes}"
        )
    return None


def _phases(plan):
    """:func:`phase_plans` of the region the body computes (per fold chunk)."""
    batch = fold_chunk(plan) if plan.folds else plan.batch
    return phase_plans(plan, batch, *_region(plan))


def workspace_bytes(plan) -> int:
    """Phases: one tile per thread (the largest phase's) and every phase's
    packed sub-kernel; else the channels-last input copy. Plus the extended
    buffer of the non-zero modes."""
    if _phased(plan):
        phases = _phases(plan)
        threads = threads_now()
        geos = [igemm.geometry(sub, threads, share=_share(phases))[0] for _, sub, _ in phases]
        work = max((g.tile_bytes(threads) for g in geos), default=0) + sum(g.weight_bytes() for g in geos)
    else:
        work = direct.channels_last_workspace(plan)
    return work + fold_workspace(plan)


def cost_features(plan) -> dict[str, float]:
    """The implicit-GEMM path's counts (:func:`numbaconv.cpu.igemm.cost_features`)
    summed over the phases it runs and the fold chunks, the Winograd row's
    estimated seconds of the phases Winograd runs (``winograd_s``), the phases of a chunk (all in
    one parallel region) and the outputs the bias fills first where some
    phase has no tap (float32 units). Complex dtypes, on the channels-last
    kernel, are counted the same (scaled by the item size), as the direct
    path counts them."""
    chunks = -(-plan.batch // fold_chunk(plan)) if plan.folds else 1
    f = {"call": 1.0, "phases": 0.0, "winograd_s": 0.0}
    phases = _phases(plan)
    wino, rest = _split(phases, id(costs.constants())) if plan.dtype.kind == "f" else ((), phases)
    for _, sub, _ in wino:  # its own estimate (float32 units: per_dtype scales it below)
        scale = 4 / plan.dtype.itemsize
        f["winograd_s"] += costs.estimate("conv/winograd", winograd.cost_features(sub)) * chunks * scale
    for _, sub, _ in rest:
        f["phases"] += chunks
        for k, v in igemm.cost_features(sub, _share(phases)).items():
            if k != "call":
                f[k] = f.get(k, 0.0) + v * chunks
    if untapped(plan, *_region(plan)):
        f["outputs"] = f.get("outputs", 0.0) + float(plan.batch * plan.c_out * int(np.prod(plan.out_size)))
    for k in igemm.FEATURES:
        f.setdefault(k, 0.0)
    return costs.per_dtype(f, plan)


def run(x5, w5, bias, plan, out5):
    """Transposed convolution by gathering (canonical 5-D arrays, see module doc)."""
    if _phased(plan):
        return with_fold(
            plan, x5, bias, out5, lambda x, b, target, lo, size: _run_phases(x, w5, b, plan, target, lo, size)
        )
    cg = plan.c_in // plan.groups
    kd, kh, kw = plan.kernel
    # the conv-layout weight (C_out, Cg, k), channels innermost: (C_out, KD, KH, KW * Cg)
    wc = np.ascontiguousarray(transposed_as_conv(w5, plan.groups).transpose(0, 2, 3, 4, 1))
    wc = wc.reshape(plan.c_out, kd, kh, kw * cg)

    def body(x, b, target, lo, size):
        tables = gather_tap_maps(plan, lo, size)
        runs = _gather_runs(plan, w5, lo[2], size[2])
        direct.run_channels_last(x, wc, b, target, tables, runs, plan.stride[2])

    return with_fold(plan, x5, bias, out5, body)


_PACKED = WeightCache("weight_cache_bytes")


def _packed(w5, groups: int, phases) -> tuple:
    """The phases' sub-kernels packed for the implicit-GEMM path, one after
    another, and each one's offset; kept between calls for the weight (one
    content compare a call)."""
    key = _pack_key(phases, *igemm.setting(w5.dtype))

    def make():
        wconv = transposed_as_conv(w5, groups)
        packs, offsets, n = [], [], 0
        for taps, block, channels_last, band in key:
            ws = wconv.take(taps[0], axis=2).take(taps[1], axis=3).take(taps[2], axis=4)
            packs.append(igemm.pack(ws, groups, block, channels_last, band))
            offsets.append(n)
            n += packs[-1].size
        return np.concatenate(packs) if packs else np.zeros(1, w5.dtype), tuple(offsets)

    return _PACKED.get(w5, ("phases", groups, key), make)


def _sub_kernels(w5, groups: int, taps: tuple) -> tuple:
    """The conv-layout sub-kernels of the phases with these ``taps`` (C
    contiguous), kept between calls for the weight (taking them measured
    ~10% of a transposed 3x3 stride-2 layer's time)."""

    def make():
        wconv = transposed_as_conv(w5, groups)
        return tuple(
            np.ascontiguousarray(wconv.take(t[0], axis=2).take(t[1], axis=3).take(t[2], axis=4)) for t in taps
        )

    return _PACKED.get(w5, ("sub-kernels", groups, taps), make)


@functools.lru_cache(maxsize=64)
def _pack_key(phases, threads, *setting) -> tuple:
    """Per phase, what its packed sub-kernel depends on."""
    share = _share(phases)
    out = []
    for _, sub, taps in phases:
        g = igemm.geometry(sub, threads, share=share)[0]
        out.append((taps, g.block, g.channels_last, g.band_rows > 0))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _runs(phases, offsets, shape, stride) -> tuple:
    """:func:`numbaconv.cpu.igemm.run_phases`'s phases: each phase's plan,
    view of the target and weight offset."""
    return tuple(
        (sub, igemm.phase_desc(shape, start, stride), off) for (start, sub, _), off in zip(phases, offsets)
    )


def _run_phases(x, w5, bias, plan, target, lo, size):
    """The phases of ``target`` (the region ``[lo, lo + size)``) as stride-1
    convs on the implicit-GEMM path in one parallel region, each written
    through a strided view; the phases no tap reaches hold the bias (the
    whole target filled first)."""
    phases = phase_plans(plan, x.shape[0], lo, size)
    if untapped(plan, lo, size):
        target[...] = bias.reshape(-1, 1, 1, 1)
    wino, phases = _split(phases, id(costs.constants()))
    if wino:
        rest = []
        for (start, sub, taps), ws in zip(wino, _sub_kernels(w5, plan.groups, tuple(p[2] for p in wino))):
            if not winograd.run_into(x, ws, bias, sub, target, start, plan.stride):
                rest.append((start, sub, taps))  # a non-finite value: the direct path's answer
        phases = phases + tuple(rest)
    if phases:
        if plan.stride[2] == 2:
            phases = _w_major(phases)
        wp, offsets = _packed(w5, plan.groups, phases)
        igemm.run_phases(x, bias, _runs(phases, offsets, target.shape, plan.stride), wp, target)
    return target


W_MAJOR = True  # a switch for comparisons


@functools.lru_cache(maxsize=64)
def _w_major(phases) -> tuple:
    """The phases ordered by their first index along W, then H, then D. The
    region hands out its tasks interleaved (the same task of each phase in
    turn) to whichever thread is free, so neighbours in this order run at
    the same time on different cores: phases that differ only along W write
    the same output lines (every other value of a row), and run side by side
    they bounced those lines between the cores (a 2x2 stride-2 layer's
    masked stores held 30% of its samples); now those running together
    differ along H (other rows), and each thread's next task is likely the
    other half of the lines it just wrote. Taken for W stride 2 (the masked
    vector stores): A/B on Zen 4, 2x2 stride-2 layers 0.67-0.89x the time,
    unet_up_2x2s2 0.86, 3-D 2x2x2 0.65, 3x3 stride-2 layers 0.99-1.03; a
    3x3 stride-3 layer (scalar stores) measured 1.07-1.27x, so not there."""
    if not W_MAJOR:
        return phases
    return tuple(sorted(phases, key=lambda p: (p[0][2], p[0][1], p[0][0])))


@functools.lru_cache(maxsize=64)
def _split(phases, constants_id) -> tuple:
    """The phases Winograd runs (its sub-kernel has taps to save and it is
    estimated faster than the implicit-GEMM path by 10%: sub-kernels of 2+
    taps with enough channels) and the others (kept per phases and cost
    constants in use)."""
    wino, rest = [], []
    for phase in phases:
        (wino if _winograd_pays(phase[1]) else rest).append(phase)
    return tuple(wino), tuple(rest)


def _winograd_pays(sub) -> bool:
    # Sub-kernels with 2+ taps along every dim the input spans: 2x1 and 1x2
    # ones (the side phases of a 3x3 stride-2 op) measured 10-35% slower
    # whole-op on Winograd than on the direct region on Zen 4, though
    # estimated faster; the direct estimate is the phase's share of the one
    # direct region (its call counted once for all phases, not here)
    if winograd.supports(sub) is not None or any(k < 2 for k, n in zip(sub.kernel, sub.in_size) if n > 1):
        return False
    fast = costs.estimate("conv/winograd", winograd.cost_features(sub))
    return fast < 0.9 * costs.estimate("conv/direct", {**direct.cost_features(sub), "call": 0.0})


def _gather_runs(plan, w5, lo: int, size: int):
    """Contiguous runs for the gather (one group, dilation 1 in W).

    Output ``ow`` of phase ``r = (ow + lo) % s`` gathers taps ``kw = r, r + s,
    ...`` from inputs ``iw0, iw0 - 1, ...``: adjacent, so in the channels-last
    row they form one run of ``J * C`` elements, read against the phase's
    weight laid out in run order (taps reversed). Only phases with the full
    ``J = ceil(KW / s)`` taps and runs inside the input use it.
    """
    if plan.groups != 1 or plan.dilation[2] != 1:
        return None
    s = plan.stride[2]
    kw = plan.kernel[2]
    width = plan.in_size[2]
    c = plan.c_in
    j = -(-kw // s)
    ow = np.arange(size, dtype=np.int64)
    r = (ow + lo) % s
    taps = -(-(kw - r) // s)  # number of kw < KW with kw % s == r
    first = (ow + lo - r) // s  # input of tap r; tap r + m*s reads first - m
    last = first - (j - 1)
    rok = (taps == j) & (last >= 0) & (first < width)
    rst = np.where(rok, last * c, 0).astype(np.int64)
    # wr[r, o, kd, kh, m*C + c] = w[c, o, kd, kh, r + (J-1-m)*s] for full phases
    wconv = w5.transpose(1, 0, 2, 3, 4)  # (O, C, KD, KH, KW), one group
    o, _, kd, kh, _ = wconv.shape
    # only phases below KW have taps (a full phase needs taps == J >= 1): one
    # block per such phase, not per stride (a stride of 10**8 would be 800 MB)
    wr = np.zeros((min(s, kw), o, kd, kh, j * c), dtype=w5.dtype)
    for ph in range(min(s, kw)):
        if -(-(kw - ph) // s) != j:
            continue
        for m in range(j):
            tap = ph + (j - 1 - m) * s
            wr[ph, :, :, :, m * c : (m + 1) * c] = wconv[:, :, :, :, tap].transpose(0, 2, 3, 1)
    return wr, rok, rst, np.where(rok, r, 0)  # the phase is read only where rok
