"""Convolution by FFT (``method="fft"``), overlap-save in tiles.

Canonical 5-D arrays as everywhere: input ``(N, C_in, D, H, W)``, weight
``(C_out, C_in/groups, KD, KH, KW)``.

The padded input ``xp`` (the padding mode applied through the same index maps
as the other paths, ``shapes.conv_tap_map``; the FFT needs the padded values
as data) is cut into tiles of stride-1 outputs. A tile of ``T`` outputs per
dim needs ``T + span - 1`` inputs (``span = dilation * (k - 1) + 1``) and is
transformed at a fast length ``L >= T + span - 1`` (``scipy.fft.next_fast_len``);
the dilated, flipped kernel's spectrum is computed once at that length. Per
frequency the channels are contracted in njit (``Y[n, o, f] = sum_c X[n, c, f]
* K[o, c, f]`` within each group), the inverse transform gives the tile's
correlation without wrap-around in its last ``T`` positions (overlap-save),
and the outputs of the tile that the stride keeps are written out with the
bias. ``T`` comes from the kernel size (a few spans) and the memory budget,
not from the input size, so long signals and large images stay within
``config.workspace_bytes``; when the whole input fits in one tile, there is
one tile. A kernel so large that even the smallest tile exceeds the budget
runs with that tile, with a RuntimeWarning.

float32 is transformed in complex64 (SciPy keeps single precision), float64 in
complex128; complex inputs use full complex transforms.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .. import config, costs
from ..common import WeightCache, dilated_flipped, flipped, fold_workspace, transposed_as_conv
from ..runtime import njit, split_run
from ..runtime import num_threads as threads_now
from ..shapes import MODE_CODES
from .fold import with_fold


@dataclasses.dataclass(frozen=True)
class Correlation:
    """What one FFT call computes: the correlation of a (padded) input with
    ``kernel`` (``dilation``), read at ``stride``, ``out_size`` outputs per dim,
    for ``batch`` samples, ``c_in`` -> ``c_out`` channels in ``groups``. For
    conv it is the plan's own geometry; the transposed op is a stride-1
    correlation of its zero-inserted input with the flipped kernel, filling the
    output (or the extended output that the non-zero modes fold). The tiling
    is planned, sized and cached on this (not on a ConvPlan, whose invariants
    the transposed op's correlation does not satisfy)."""

    batch: int
    c_in: int
    c_out: int
    groups: int
    kernel: tuple[int, int, int]
    dilation: tuple[int, int, int]
    stride: tuple[int, int, int]
    out_size: tuple[int, int, int]
    dtype: np.dtype


def correlation(plan, batch: int | None = None) -> Correlation:
    """The :class:`Correlation` a call on ``plan`` computes (``batch`` samples)."""
    conv = plan.op == "conv"
    return Correlation(
        batch=plan.batch if batch is None else batch,
        c_in=plan.c_in,
        c_out=plan.c_out,
        groups=plan.groups,
        kernel=plan.kernel,
        dilation=plan.dilation,
        stride=plan.stride if conv else (1, 1, 1),
        out_size=plan.out_size if conv or not plan.folds else plan.extended_size,
        dtype=plan.dtype,
    )


def _span(cor, i: int) -> int:
    return cor.dilation[i] * (cor.kernel[i] - 1) + 1


def _valid_len(cor, i: int) -> int:
    """Stride-1 outputs that the strided output needs: positions 0 .. (out - 1) * stride."""
    return (cor.out_size[i] - 1) * cor.stride[i] + 1


_ODD = (1, 3, 5, 9, 15, 25, 27, 45, 75, 135, 225)


def _smooth(m: int) -> bool:
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


def _sfft():
    """scipy.fft, with rocket-fft imported (it makes scipy.fft callable in njit
    code and registers the symbols cached kernels link to), imported on first
    use rather than with this module: the dispatcher imports the module for
    its cost estimates. (Numba itself imports rocket-fft, a numba extension
    entry point, when its CPU target first initializes.)"""
    import rocket_fft  # noqa: F401
    import scipy.fft

    return scipy.fft


@functools.lru_cache(maxsize=4096)
def _fast_len(n: int) -> int:
    """The smallest ``m * 2**a >= n`` with a small odd ``m`` and ``2**a >= 16``.

    pocketfft's real transforms ran at ~0.26 ns per point*log2(points) here for
    such lengths and at ~0.40 for 5-smooth lengths with many factors 3 or 5
    (3125, 9375, 67500), so ``next_fast_len`` alone is not the fastest choice."""
    if n <= 16:  # the next 5-smooth length (scipy.fft.next_fast_len's, without importing it)
        return next(m for m in range(max(n, 1), 17) if _smooth(m))
    best = None
    for m in _ODD:
        q = -(-n // m)  # 2**a >= ceil(n / m)
        a = max(4, (q - 1).bit_length())
        cand = m << a
        if best is None or cand < best:
            best = cand
    return best


def _candidates(need: int, span: int) -> list[tuple[int, int]]:
    """(tile, fft length) choices for one dim: tiles of a few spans up to all of it."""
    if need == 1 and span == 1:
        return [(1, 1)]
    out = []
    for mult in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024):
        t = min(need, mult * span)
        length = _fast_len(t + span - 1)
        out.append((min(need, length - span + 1), length))
        if t == need:
            break
    return sorted(set(out))


# The tile choice's seconds per unit are the dispatcher's ``conv/fft``
# constants (numbaconv.costs.SHIPPED, refitted by `numbaconv calibrate`): per
# point * log2(points) of a transform, per complex multiply-add of the channel
# contraction, per transform call, per point gathered, zeroed or written out.
# (Fitted separately on 148 measured tilings of 8 cases, the constants chose
# the same tiling on 109 of 110 cases, the other a 0.03% tie.)
_CONSTANTS = ("fft_point_logs", "cmacs", "transforms", "points")


def _counts(cor, tiles, lens) -> dict[str, float]:
    """Operation counts of a call with this tiling: point x log2(points) of
    every transform, complex multiply-adds of the contraction, transform
    calls, and points gathered, zeroed or written out (float32 units:
    float64 and complex inputs scale by the item size)."""
    need = [_valid_len(cor, i) for i in range(3)]
    count = 1
    for i in range(3):
        count *= -(-need[i] // tiles[i])
    m = lens[0] * lens[1] * lens[2]
    f = lens[0] * lens[1] * (lens[2] // 2 + 1)
    scale = cor.dtype.itemsize / 4  # float64 and complex transforms cost ~2x, ~4x
    signals = count * cor.batch * (cor.c_in + cor.c_out)
    cmacs = count * cor.batch * cor.c_out * (cor.c_in // cor.groups) * f
    return {
        "fft_point_logs": signals * m * max(1.0, float(np.log2(m))) * scale,
        "cmacs": cmacs * scale,
        "transforms": float(signals),
        "points": signals * m * scale,
    }


def _cost(cor, tiles, lens, consts) -> float:
    """Estimated seconds of a call with this tiling in steady state (the kernel
    spectra cached): transforms of every tile, sample and channel, the channel
    contraction, per-transform overheads and the gathers."""
    c = _counts(cor, tiles, lens)
    return sum(c[k] * v for k, v in zip(_CONSTANTS, consts))


def cost_features(plan) -> dict[str, float]:
    """Operation counts of a call (:func:`_counts` of the tiling it uses), one
    call, and for the transposed op the output elements (its fold and bias)."""
    cor = correlation(plan)
    tiles, lens = _tile_plan(cor)
    f = {"call": 1.0}
    if plan.op != "conv":
        f["outputs"] = float(plan.batch * plan.c_out * int(np.prod(plan.out_size)))
    f.update(_counts(cor, tiles, lens))
    return f


def _tile_plan(cor):
    """Cached :func:`_plan_tiles` (asked by ``supports``, ``workspace_bytes`` and ``run``)."""
    consts = costs.constants()["conv/fft"]
    return _plan_tiles(cor, config.workspace_bytes, tuple(consts[k] for k in _CONSTANTS))


@functools.lru_cache(maxsize=256)
def _plan_tiles(cor, budget, consts):
    """Tile sizes ``T`` (stride-1 outputs per tile) and FFT lengths ``L`` per dim:
    the cheapest tiling by :func:`_cost` whose buffers fit ``budget`` bytes
    (or, if none fits, the smallest)."""
    need = [_valid_len(cor, i) for i in range(3)]
    spans = [_span(cor, i) for i in range(3)]
    options = [_candidates(need[i], spans[i]) for i in range(3)]
    best = None
    smallest = None
    for combo in itertools.product(*options):
        tiles = [c[0] for c in combo]
        lens = [c[1] for c in combo]
        size = tile_bytes(cor, lens)
        if smallest is None or size < smallest[0]:
            smallest = (size, tiles, lens)
        if size > budget:
            continue
        cost = _cost(cor, tiles, lens, consts)
        if best is None or cost < best[0]:
            best = (cost, tiles, lens)
    chosen = best or smallest
    return tuple(chosen[1]), tuple(chosen[2])


def _batch_bytes(cor, lens) -> tuple[int, int]:
    """(fixed bytes, bytes per tile) of the buffers of a batch of tiles: the
    kernel spectra (and their temporaries), per thread a tile, its spectrum and
    inverse (and the transforms' copies), per tile the input and output spectra
    of every sample and channel and the tile's index maps."""
    real = cor.dtype.kind == "f"
    item = cor.dtype.itemsize
    citem = 2 * item if real else item
    lw = lens[2] // 2 + 1 if real else lens[2]
    freq = lens[0] * lens[1] * lw
    space = lens[0] * lens[1] * lens[2]
    cg = cor.c_in // cor.groups
    n, c, o = cor.batch, cor.c_in, cor.c_out
    threads = numba.config.NUMBA_NUM_THREADS * (_GROUP_1D if lens[0] == lens[1] == 1 else 1)
    fixed = 2 * o * cg * freq * citem + threads * 2 * (space * item + freq * citem)
    per_tile = n * (c + o) * freq * citem + 8 * (lens[0] + lens[1] + lens[2]) + 128
    return fixed, per_tile


def tile_bytes(cor, lens) -> int:
    """Bytes of the buffers of a batch of one tile (the least :func:`run` needs)."""
    fixed, per_tile = _batch_bytes(cor, lens)
    return fixed + per_tile


def _tiles_per_batch(cor, lens, total: int) -> int:
    """Tiles transformed together: as many as ``config.workspace_bytes`` holds."""
    fixed, per_tile = _batch_bytes(cor, lens)
    return int(max(1, min(total, (config.workspace_bytes - fixed) // per_tile)))


# the FFT computes every stride-1 output; it refuses when that is this many
# times the outputs asked for (and large): work in proportion to the stride
# or the padding, not to the result
_STRIDE1_WASTE = 4096
_STRIDE1_FLOOR = 2**24


def supports(plan) -> str | None:
    """None when the FFT path can run the plan, else why not. Its workspace is
    never the reason: where even its smallest tile needs more than
    ``config.workspace_bytes`` it runs with that tile all the same (the API
    warns); ``auto`` then prefers a method within the budget unless that is
    estimated 10x slower (:mod:`numbaconv.dispatch`)."""
    cor = correlation(plan)
    positions = int(np.prod([_valid_len(cor, i) for i in range(3)]))
    outputs = int(np.prod(cor.out_size))
    if positions > max(_STRIDE1_FLOOR, _STRIDE1_WASTE * outputs):
        return (
            f"it computes every stride-1 position, {positions} here for {outputs} outputs (stride "
            f"{plan.user.stride}); use 'direct' or 'gemm'"
        )
    return None


def workspace_bytes(plan) -> int:
    """Extra memory a call allocates: a batch of tiles' buffers (and the
    transposed op's extended buffer for the non-zero padding modes)."""
    cor = correlation(plan)
    tiles, lens = _tile_plan(cor)
    count = int(np.prod([-(-_valid_len(cor, i) // tiles[i]) for i in range(3)]))
    fixed, per_tile = _batch_bytes(cor, lens)
    return fixed + _tiles_per_batch(cor, lens, count) * per_tile + fold_workspace(plan)


@njit(cache=True)
def _conv_window(starts, length, lo, size, hi, mode):
    # out[t, e]: input index of padded position starts[t] + e, folded by the
    # mode (shapes.MODE_CODES: 0 zeros, 1 reflect, 2 replicate, 3 circular, 4 symmetric; the
    # njit twin of shapes.fold_index, tested equal), -1 in zero padding
    # and past the padded end (numpy's version spent 0.7 ms in temporaries on
    # a 65536-sample signal); runs[t] = (lo, hi, base): out[t, lo:hi] ==
    # base + arange(hi - lo)
    out = np.empty((starts.shape[0], length), np.int64)
    runs = np.zeros((starts.shape[0], 3), np.int64)
    period = 2 * (size - 1)
    for t in range(starts.shape[0]):
        # the unpadded stretch reads inputs e + starts[t] - lo: a block copy
        a = min(max(0, lo - starts[t]), length)
        b = max(a, min(length, lo + size - starts[t]))
        runs[t, 0], runs[t, 1], runs[t, 2] = a, b, a + starts[t] - lo
        for e in range(length):
            p = starts[t] + e
            q = p - lo
            if p >= lo + size + hi:
                q = -1
            elif q < 0 or q >= size:
                if mode == 0:
                    q = -1
                elif mode == 1:
                    if size == 1:
                        q = 0
                    else:
                        q = q % period
                        if q >= size:
                            q = period - q
                elif mode == 2:
                    q = 0 if q < 0 else size - 1
                elif mode == 3:
                    q = q % size
                else:  # symmetric: period 2 * size, the edge repeated
                    q = q % (2 * size)
                    if q >= size:
                        q = 2 * size - 1 - q
            out[t, e] = q
    return out, runs


@njit(cache=True)
def _zero_inserted_window(starts, length, shift, stride, size):
    # out[t, e]: input index q of position m = starts[t] + e + shift of the input
    # with stride - 1 zeros between samples (m == q * stride), else -1; runs as
    # in _conv_window (none for stride > 1)
    out = np.empty((starts.shape[0], length), np.int64)
    runs = np.zeros((starts.shape[0], 3), np.int64)
    for t in range(starts.shape[0]):
        if stride == 1:  # the inputs in range form one block
            a = min(max(0, -starts[t] - shift), length)
            b = max(a, min(length, size - starts[t] - shift))
            runs[t, 0], runs[t, 1], runs[t, 2] = a, b, a + starts[t] + shift
        for e in range(length):
            m = starts[t] + e + shift
            q = m // stride
            out[t, e] = q if m >= 0 and m - q * stride == 0 and q < size else -1
    return out, runs


def _window_map(plan, i: int, starts, length: int):
    """Input index of padded positions ``s .. s + length - 1`` in dim ``i`` for
    each tile start ``s`` (a row per start; the padding mode folded in, -1 for
    zero padding and past the padded end), and each row's block of contiguous
    inputs ``(lo, hi, base)``. Built per batch of tiles: a map of the whole
    padded length would cost 8 bytes per sample of a long signal."""
    lo, hi = plan.padding[i]
    return _conv_window(starts, length, lo, plan.in_size[i], hi, MODE_CODES[plan.mode(i)])


def run(x5, w5, bias, plan, out5):
    """Convolution by FFT, overlap-save in tiles (canonical 5-D arrays)."""
    return _correlate(
        x5, w5, bias, correlation(plan), out5, lambda i, starts, length: _window_map(plan, i, starts, length)
    )


def run_transpose(x5, w5, bias, plan, out5):
    """Transposed convolution by FFT (canonical 5-D arrays).

    ``out[q] = sum_k w[k] * u[q + lo - k * dilation]`` where ``u`` is the input
    with ``stride - 1`` zeros inserted between samples: a stride-1 correlation
    of ``u`` (shifted by ``lo - span + 1``) with the flipped kernel. The
    zero-inserted input is never stored: each tile is gathered through an
    index map that is -1 off the stride grid. Non-zero padding modes compute
    the extended output and fold it (:mod:`numbaconv.cpu.fold`).
    """
    wconv = np.ascontiguousarray(flipped(transposed_as_conv(w5, plan.groups)))
    spans = plan.spans

    def body(x, b, target, lo, size):
        def window(i, starts, length):
            return _zero_inserted_window(
                starts, length, lo[i] - spans[i] + 1, plan.stride[i], plan.in_size[i]
            )

        _correlate(x, wconv, b, correlation(plan, x.shape[0]), target, window)

    return with_fold(plan, x5, bias, out5, body)


_SPECTRA = WeightCache("fft_kernel_cache_bytes")  # kernel spectra of recent calls


def _kernel_spectrum(w5, cor, lens, workers):
    """The spectrum ``(C_out, Cg, F)`` of the dilated, flipped kernel at ``lens``.

    Transforming the kernel is often the largest single cost of a call (one
    spectrum per output x input channel), so the spectra of recent calls are
    kept with a copy of their weights, up to ``config.fft_kernel_cache_bytes``
    in all (0 turns this off; :class:`numbaconv.common.WeightCache`: a call
    whose weights equal a kept copy bit for bit skips the transform).
    """

    def transform():
        sfft = _sfft()
        o, cg = w5.shape[0], w5.shape[1]
        # the dilated kernel, flipped: correlation = convolution with the flip
        wd = dilated_flipped(w5, cor.dilation, np.zeros)
        # transform the small kernel axis by axis (the zero padding of the later
        # axes is not transformed): 3x cheaper than rfftn for a 31x31 kernel at 288
        if cor.dtype.kind == "f":
            kspec = sfft.rfft(wd, n=lens[2], axis=4, workers=workers)
        else:
            kspec = sfft.fft(wd, n=lens[2], axis=4, workers=workers)
        for ax in (3, 2):  # length-1 axes need no transform (pocketfft would still copy)
            if lens[ax - 2] > 1:
                # along the last (contiguous) axis: a strided transform was 3x slower
                moved = np.ascontiguousarray(np.moveaxis(kspec, ax, -1))
                moved = sfft.fft(moved, n=lens[ax - 2], axis=-1, workers=workers, overwrite_x=True)
                kspec = np.moveaxis(moved, -1, ax)
        fshape = kspec.shape[2:]
        return np.ascontiguousarray(kspec.reshape(o, cg, -1)), fshape

    return _SPECTRA.get(w5, (tuple(lens), cor.dilation), transform)


def _placement(cor, i: int, start: int, tile: int):
    """(first output, output count, tile offset) of the strided outputs that the
    tile of stride-1 outputs ``start .. start + tile - 1`` in dim ``i`` holds:
    output ``first + p`` sits at position ``offset + p * stride`` of the tile's
    inverse transform (overlap-save: the valid part starts at ``span - 1``)."""
    need = _valid_len(cor, i)
    end = min(start + tile, need)
    s = cor.stride[i]
    first = -(-start // s)  # first output index o with o * s >= start
    last = (end - 1) // s
    return first, max(0, last - first + 1), first * s - start + _span(cor, i) - 1


def _spectrum(buf, axes):  # pragma: no cover - replaced by the overload in njit code
    raise NotImplementedError


@overload(_spectrum)
def _spectrum_impl(buf, axes):
    sfft = _sfft()
    if isinstance(buf.dtype, types.Complex):
        return lambda buf, axes: sfft.fftn(buf, axes=axes, workers=1)
    return lambda buf, axes: sfft.rfftn(buf, axes=axes, workers=1)


def _signal(spec, lens, axes, out):  # pragma: no cover - replaced by the overload in njit code
    raise NotImplementedError


@overload(_signal)
def _signal_impl(spec, lens, axes, out):
    # the inverse transform, real or complex as the output array ``out`` is
    sfft = _sfft()
    if isinstance(out.dtype, types.Complex):
        return lambda spec, lens, axes, out: sfft.ifftn(spec, axes=axes, workers=1)
    return lambda spec, lens, axes, out: sfft.irfftn(spec, s=lens, axes=axes, workers=1)


@njit(cache=True, nogil=True)
def _forward_tasks(x, X, maps0, maps1, maps2, run2, lens, axes, group, start, stop):
    # X[t * N + n, c, :] = spectrum of tile t of x[n, c] (padded positions read
    # through the tile's maps, -1 = zero; in the last dim positions
    # run2[t, 0] .. run2[t, 1] - 1 read the contiguous inputs from run2[t, 2]
    # on). A task transforms `group` consecutive signals (t, n, c) in one call
    # (pocketfft vectorizes 1-D transforms across a batch: 2.4x faster than one
    # at a time), workers=1: the tasks are the parallelism. Tasks [start,
    # stop), a piece of runtime.split_run (nogil, on Python threads: no
    # parallel region to compile, and the tasks are milliseconds long)
    N, C = x.shape[0], x.shape[1]
    E0, E1, E2 = maps0.shape[1], maps1.shape[1], maps2.shape[1]
    S = maps0.shape[0] * N * C
    Xs = X.reshape(X.shape[0] * C, X.shape[2])
    for task in range(start, stop):
        s0 = task * group
        g = min(group, S - s0)
        buf = np.zeros((g, lens[0], lens[1], lens[2]), dtype=x.dtype)
        for j in range(g):
            c = (s0 + j) % C
            r = (s0 + j) // C
            n = r % N
            tl = r // N
            lo, hi, base = run2[tl, 0], run2[tl, 1], run2[tl, 2]
            for a in range(E0):
                idd = maps0[tl, a]
                if idd < 0:
                    continue
                for b in range(E1):
                    ih = maps1[tl, b]
                    if ih < 0:
                        continue
                    src = x[n, c, idd, ih]
                    dst = buf[j, a, b]
                    for e in range(lo):
                        iw = maps2[tl, e]
                        if iw >= 0:
                            dst[e] = src[iw]
                    # loops, not array slice assignments (those compile Numba's
                    # string-formatting error path: ~4 s); unsigned indices: no
                    # negative-index wraparound test, so the copies vectorize
                    ul, ub = np.uint64(lo), np.uint64(base)
                    for e in range(np.uint64(hi - lo)):
                        dst[ul + e] = src[ub + e]
                    for e in range(hi, E2):
                        iw = maps2[tl, e]
                        if iw >= 0:
                            dst[e] = src[iw]
        spec = _spectrum(buf, axes).reshape(-1)
        Xf = X.reshape(-1)
        u0 = np.uint64(s0 * Xs.shape[1])
        for q in range(np.uint64(spec.size)):
            Xf[u0 + q] = spec[q]


_FB = 256  # frequencies per task of the channel contraction
_GROUP_1D = 8  # 1-D signals transformed per call (8 measured as fast as 16, 2.4x one)


def _group(lens, signals: int) -> int:
    """Signals a task transforms in one call: a batch for 1-D transforms (so
    pocketfft vectorizes across them) while every thread keeps a task; one for
    multi-dimensional transforms (vectorized within each already)."""
    if lens[0] > 1 or lens[1] > 1:
        return 1
    return int(max(1, min(_GROUP_1D, signals // threads_now())))


def _batch_maps(window, batch, ext):
    """The index maps of a batch of tiles (a row per tile and dim) and the
    runs of the last dim's maps."""
    starts = np.asarray(batch, dtype=np.int64).reshape(len(batch), 3)
    maps = [window(i, starts[:, i], ext[i]) for i in range(3)]
    return maps[0][0], maps[1][0], maps[2][0], maps[2][1]


@njit(cache=True, nogil=True)
def _contract_tasks(X, K, Y, G, start, stop):
    # Y[b, o, f] = sum_{c in group of o} X[b, c, f] * K[o, c - g * Cg, f], in
    # blocks of frequencies: a task reads its part of K once for all tiles.
    # Four channels per pass over y (1.5x faster than one: y is loaded and
    # stored a quarter as often); the inner loops run over slices from 0 (a
    # loop from f0 keeps numba's negative-index check and ran 2.5x slower)
    F = X.shape[2]
    O, Cg = K.shape[0], K.shape[1]
    Og = O // G
    for blk in range(start, stop):
        f0 = blk * _FB
        f1 = min(F, f0 + _FB)
        for o in range(O):
            g0 = (o // Og) * Cg
            for b in range(X.shape[0]):
                y = Y[b, o, f0:f1]
                y[:] = 0
                cl = 0
                while cl + 4 <= Cg:
                    x0, x1 = X[b, g0 + cl, f0:f1], X[b, g0 + cl + 1, f0:f1]
                    x2, x3 = X[b, g0 + cl + 2, f0:f1], X[b, g0 + cl + 3, f0:f1]
                    k0, k1 = K[o, cl, f0:f1], K[o, cl + 1, f0:f1]
                    k2, k3 = K[o, cl + 2, f0:f1], K[o, cl + 3, f0:f1]
                    for j in range(y.shape[0]):
                        y[j] += x0[j] * k0[j] + x1[j] * k1[j] + x2[j] * k2[j] + x3[j] * k3[j]
                    cl += 4
                while cl < Cg:
                    x = X[b, g0 + cl, f0:f1]
                    k = K[o, cl, f0:f1]
                    for j in range(y.shape[0]):
                        y[j] += x[j] * k[j]
                    cl += 1


@njit(cache=True, nogil=True)
def _inverse_tasks(Y, fshape, out, bias, place, lens, axes, stride, group, start, stop):
    # the inverse transform of each (tile, n, o), `group` signals per call, and
    # its strided outputs (+ bias) into out; place[t, dim] = (first output,
    # count, offset in the tile)
    N, O = out.shape[0], out.shape[1]
    S = place.shape[0] * N * O
    Ys = Y.reshape(Y.shape[0] * O, Y.shape[2])
    for task in range(start, stop):
        s0 = task * group
        g = min(group, S - s0)
        full = _signal(Ys[s0 : s0 + g].reshape((g, fshape[0], fshape[1], fshape[2])), lens, axes, out)
        for j in range(g):
            o = (s0 + j) % O
            r = (s0 + j) // O
            n = r % N
            tl = r // N
            b0 = bias[o] if bias.shape[0] > 0 else 0
            q0, c0, a0 = place[tl, 0, 0], place[tl, 0, 1], place[tl, 0, 2]
            q1, c1, a1 = place[tl, 1, 0], place[tl, 1, 1], place[tl, 1, 2]
            q2, c2, a2 = place[tl, 2, 0], place[tl, 2, 1], place[tl, 2, 2]
            for p0 in range(c0):
                for p1 in range(c1):
                    for p2 in range(c2):
                        out[n, o, q0 + p0, q1 + p1, q2 + p2] = (
                            full[j, a0 + p0 * stride[0], a1 + p1 * stride[1], a2 + p2 * stride[2]] + b0
                        )


def _correlate(x5, w5, bias, cor, out5, window):
    """Correlation of the padded input (read through ``window(dim, start,
    length)``) with ``w5``, overlap-save in tiles, strided outputs into ``out5``.

    Tiles go in batches (as many as the budget holds): one parallel pass
    gathers and transforms every (tile, sample, channel) of the batch, one
    contracts the channels for all of them (reading the kernel spectra once),
    one inverts each (tile, sample, output channel) and writes its outputs."""
    _sfft()  # rocket-fft's symbols, before a kernel is compiled or loaded from the cache
    tiles, lens = _tile_plan(cor)
    spans = [_span(cor, i) for i in range(3)]
    kspec, fshape = _kernel_spectrum(w5, cor, lens, threads_now())
    need = [_valid_len(cor, i) for i in range(3)]
    axes = tuple(ax for ax in (1, 2) if lens[ax - 1] > 1) + (3,)  # of (signal, L0, L1, L2)
    ext = [min(lens[i], tiles[i] + spans[i] - 1) for i in range(3)]
    starts = list(itertools.product(*[range(0, need[i], tiles[i]) for i in range(3)]))
    per = _tiles_per_batch(cor, lens, len(starts))
    n, nf = cor.batch, kspec.shape[2]
    X = np.empty((per * n, cor.c_in, nf), dtype=kspec.dtype)
    Y = np.empty((per * n, cor.c_out, nf), dtype=kspec.dtype)
    b = np.zeros(0, cor.dtype) if bias is None else np.ascontiguousarray(bias, dtype=cor.dtype)
    lens_t = tuple(int(v) for v in lens)
    tlens = tuple(lens_t[ax - 1] for ax in axes)
    stride = tuple(int(s) for s in cor.stride)
    for t0 in range(0, len(starts), per):
        batch = starts[t0 : t0 + per]
        cnt = len(batch)
        # the maps are arguments only: they are freed before the next batch's
        group = _group(lens, cnt * n * cor.c_in)
        signals = cnt * n * cor.c_in
        maps = _batch_maps(window, batch, ext)
        split_run(_forward_tasks, -(-signals // group), x5, X[: cnt * n], *maps, lens_t, axes, group)
        split_run(_contract_tasks, -(-nf // _FB), X[: cnt * n], kspec, Y[: cnt * n], cor.groups)
        place = np.array([[_placement(cor, i, s[i], tiles[i]) for i in range(3)] for s in batch], np.int64)
        group = _group(lens, cnt * n * cor.c_out)
        signals = cnt * n * cor.c_out
        split_run(
            _inverse_tasks,
            -(-signals // group),
            Y,
            fshape,
            out5,
            b,
            place,
            tlens,
            axes,
            stride,
            group,
        )
    return out5
