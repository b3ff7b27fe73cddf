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
one tile.

float32 is transformed in complex64 (SciPy keeps single precision), float64 in
complex128; complex inputs use full complex transforms.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import threading
from collections import OrderedDict

import numba
import numpy as np
import scipy.fft as sfft
from numba import njit, prange

from .. import config
from ..shapes import tap_table
from .transpose import extended_size, folds, with_fold

try:  # rocket-fft makes scipy.fft callable inside njit; measured 1.1-2.3x faster here
    import rocket_fft  # noqa: F401

    HAVE_ROCKET_FFT = True
except ImportError:  # pragma: no cover - rocket-fft is a dependency; this is a guard
    HAVE_ROCKET_FFT = False


@njit(cache=True)
def _rfftn_nb(x, axes, workers):
    return sfft.rfftn(x, axes=axes, workers=workers)


@njit(cache=True)
def _irfftn_nb(x, s, axes, workers):
    return sfft.irfftn(x, s=s, axes=axes, workers=workers)


@njit(cache=True)
def _fftn_nb(x, axes, workers):
    return sfft.fftn(x, axes=axes, workers=workers)


@njit(cache=True)
def _ifftn_nb(x, axes, workers):
    return sfft.ifftn(x, axes=axes, workers=workers)


def _forward(x, axes, workers, real):
    """The tile's spectrum over ``axes`` (x already has the FFT lengths)."""
    if HAVE_ROCKET_FFT:
        return _rfftn_nb(x, axes, workers) if real else _fftn_nb(x, axes, workers)
    return (sfft.rfftn if real else sfft.fftn)(x, axes=axes, workers=workers)


def _inverse(y, lens, axes, workers, real):
    if HAVE_ROCKET_FFT:
        return _irfftn_nb(y, lens, axes, workers) if real else _ifftn_nb(y, axes, workers)
    if real:
        return sfft.irfftn(y, s=lens, axes=axes, workers=workers, overwrite_x=True)
    return sfft.ifftn(y, axes=axes, workers=workers, overwrite_x=True)


@njit(parallel=True, cache=True)
def _contract(X, K, Y, G):
    # Y[n, o, f] = sum_{c in group of o} X[n, c, f] * K[o, c - g * Cg, f]
    N, C, F = X.shape
    O, Cg = K.shape[0], K.shape[1]
    Og = O // G
    for t in prange(N * O):
        o = t % O
        n = t // O
        g = o // Og
        for f in range(F):
            Y[n, o, f] = 0
        for cl in range(Cg):
            c = g * Cg + cl
            for f in range(F):
                Y[n, o, f] += X[n, c, f] * K[o, cl, f]


def _span(plan, i: int) -> int:
    return plan.dilation[i] * (plan.kernel[i] - 1) + 1


def _valid_len(plan, i: int) -> int:
    """Stride-1 outputs that the strided output needs: positions 0 .. (out - 1) * stride."""
    return (plan.out_size[i] - 1) * plan.stride[i] + 1


def _candidates(need: int, span: int) -> list[tuple[int, int]]:
    """(tile, fft length) choices for one dim: tiles of a few spans up to all of it."""
    if need == 1 and span == 1:
        return [(1, 1)]
    out = []
    for mult in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024):
        t = min(need, mult * span)
        length = sfft.next_fast_len(t + span - 1, real=True)
        out.append((min(need, length - span + 1), length))
        if t == need:
            break
    return sorted(set(out))


def _cost(plan, tiles, lens) -> float:
    """Relative work of one tiling: kernel spectra once, then per tile the
    forward and inverse transforms and the channel contraction."""
    need = [_valid_len(plan, i) for i in range(3)]
    count = 1
    for i in range(3):
        count *= -(-need[i] // tiles[i])
    m = lens[0] * lens[1] * lens[2]
    f = lens[0] * lens[1] * (lens[2] // 2 + 1)
    # transforms that outgrow the caches run slower per point (measured: a
    # 1024x1024 'same' 65x65 convolution was fastest in 324x600 tiles)
    fft_unit = m * max(1.0, np.log2(m)) * (1.0 + m / 2**19)
    cg = plan.c_in // plan.groups
    kernel = plan.c_out * cg * fft_unit
    per_tile = plan.batch * (plan.c_in + plan.c_out) * fft_unit + 4 * plan.batch * plan.c_out * cg * f
    # each tile also costs ~100 us of calls (gather, 2 transforms, contraction):
    # about as much as transforming 2e5 points
    return kernel + count * (per_tile + 2e5 * 17)


def _tile_plan(plan):
    """Cached :func:`_plan_tiles` (asked by ``supports``, ``workspace_bytes`` and ``run``)."""
    return _plan_tiles(plan, config.workspace_bytes)


@functools.lru_cache(maxsize=256)
def _plan_tiles(plan, budget):
    """Tile sizes ``T`` (stride-1 outputs per tile) and FFT lengths ``L`` per dim:
    the cheapest tiling by :func:`_cost` whose buffers fit ``budget`` bytes
    (or, if none fits, the smallest)."""
    need = [_valid_len(plan, i) for i in range(3)]
    spans = [_span(plan, i) for i in range(3)]
    options = [_candidates(need[i], spans[i]) for i in range(3)]
    best = None
    smallest = None
    for combo in itertools.product(*options):
        tiles = [c[0] for c in combo]
        lens = [c[1] for c in combo]
        size = tile_bytes(plan, lens)
        if smallest is None or size < smallest[0]:
            smallest = (size, tiles, lens)
        if size > budget:
            continue
        cost = _cost(plan, tiles, lens)
        if best is None or cost < best[0]:
            best = (cost, tiles, lens)
    chosen = best or smallest
    return tuple(chosen[1]), tuple(chosen[2])


def tile_bytes(plan, lens) -> int:
    """Bytes of one tile's buffers: the input tile and its spectrum, the kernel
    spectra, the product, the inverse transform, and the intermediates of the
    transforms (SciPy's multi-axis transforms and the inverse's copy of its
    input each hold about one more spectrum)."""
    real = plan.dtype.kind == "f"
    item = plan.dtype.itemsize
    citem = 2 * item if real else item
    lw = lens[2] // 2 + 1 if real else lens[2]
    freq = lens[0] * lens[1] * lw
    space = lens[0] * lens[1] * lens[2]
    cg = plan.c_in // plan.groups
    n, c, o = plan.batch, plan.c_in, plan.c_out
    return (
        n * c * space * item
        + 2 * n * c * freq * citem
        + 2 * o * cg * freq * citem
        + 2 * n * o * freq * citem
        + n * o * space * item
        + 32 * (lens[0] + lens[1] + lens[2])  # the tile's index maps and their temporaries
    )


def supports(plan) -> str | None:
    """None when ``method="fft"`` can run the plan, else why not."""
    if plan.op != "conv":
        plan = _conv_view(plan, _transpose_target(plan))
    tiles, lens = _tile_plan(plan)
    need = tile_bytes(plan, lens)
    if need > config.workspace_bytes:
        return (
            f"the smallest FFT tile (lengths {tuple(lens)}) needs {need} bytes, more than "
            f"config.workspace_bytes={config.workspace_bytes}"
        )
    return None


def workspace_bytes(plan) -> int:
    """Extra memory :func:`run` allocates (one tile's buffers)."""
    if plan.op != "conv":
        plan = _conv_view(plan, _transpose_target(plan))
    _, lens = _tile_plan(plan)
    return tile_bytes(plan, lens)


def _window_map(plan, i: int, start: int, length: int):
    """Input index of padded positions ``start .. start + length - 1`` in dim ``i``
    (the padding mode folded in, -1 for zero padding and past the padded end).
    Built per tile: a map of the whole padded length would cost 8 bytes per
    sample of a long signal."""
    lo, hi = plan.padding[i]
    size = plan.in_size[i]
    m = tap_table(length, 1, 1, 1, lo - start, size, plan.padding_mode)[:, 0]
    past = np.arange(start, start + length) >= lo + size + hi
    return np.where(past, -1, m)


@njit(parallel=True, cache=True)
def _gather_tile(x, tile, fd, fh, fw):
    # tile[n, c, a, b, e] = x[n, c, fd[a], fh[b], fw[e]], 0 where a map says -1
    N, C = x.shape[0], x.shape[1]
    TD, TH, TW = tile.shape[2], tile.shape[3], tile.shape[4]
    for t in prange(N * C * TD):
        a = t % TD
        r = t // TD
        c = r % C
        n = r // C
        idd = fd[a]
        for b in range(TH):
            ih = fh[b]
            if idd < 0 or ih < 0:
                for e in range(TW):
                    tile[n, c, a, b, e] = 0
                continue
            for e in range(TW):
                iw = fw[e]
                tile[n, c, a, b, e] = x[n, c, idd, ih, iw] if iw >= 0 else 0


def run(x5, w5, bias, plan, out5):
    """Convolution by FFT, overlap-save in tiles (canonical 5-D arrays)."""
    return _correlate(x5, w5, bias, plan, out5, lambda i, start, length: _window_map(plan, i, start, length))


def _conv_view(plan, size):
    """The stride-1 correlation the transposed op is computed as (see :func:`run_transpose`)."""
    return dataclasses.replace(
        plan,
        op="conv",
        stride=(1, 1, 1),
        out_size=tuple(size),
        padding=((0, 0),) * 3,
        padding_mode="zeros",
        output_padding=(0, 0, 0),
    )


def _transpose_target(plan):
    """The size the transposed op's correlation fills: the output, or the
    extended output that non-zero padding modes fold."""
    return extended_size(plan) if folds(plan) else plan.out_size


def run_transpose(x5, w5, bias, plan, out5):
    """Transposed convolution by FFT (canonical 5-D arrays).

    ``out[q] = sum_k w[k] * u[q + lo - k * dilation]`` where ``u`` is the input
    with ``stride - 1`` zeros inserted between samples: a stride-1 correlation
    of ``u`` (shifted by ``lo - span + 1``) with the flipped kernel. The
    zero-inserted input is never stored: each tile is gathered through an
    index map that is -1 off the stride grid. Non-zero padding modes compute
    the extended output and fold it (:mod:`numbaconv.cpu.transpose`).
    """
    g = plan.groups
    cg = plan.c_in // g
    og = plan.c_out // g
    kd, kh, kw = plan.kernel
    # (C_in, Og, k) -> (C_out, Cg, k), flipped
    wconv = w5.reshape(g, cg, og, kd, kh, kw).transpose(0, 2, 1, 3, 4, 5).reshape(plan.c_out, cg, kd, kh, kw)
    wconv = np.ascontiguousarray(wconv[:, :, ::-1, ::-1, ::-1])
    spans = [_span(plan, i) for i in range(3)]

    def body(x, b, target, lo, size):
        cplan = dataclasses.replace(_conv_view(plan, size), batch=x.shape[0])

        def window(i, start, length):
            m = np.arange(start, start + length, dtype=np.int64) - spans[i] + 1 + lo[i]
            s = plan.stride[i]
            q = m // s
            return np.where((m >= 0) & (m - q * s == 0) & (q < plan.in_size[i]), q, -1)

        _correlate(x, wconv, b, cplan, target, window)

    return with_fold(plan, x5, bias, out5, body)


_SPECTRA: OrderedDict = OrderedDict()  # kernel spectra of recent calls (LRU)
_SPECTRA_LOCK = threading.Lock()


def _kernel_spectrum(w5, plan, lens, workers):
    """The spectrum ``(C_out, Cg, F)`` of the dilated, flipped kernel at ``lens``.

    Transforming the kernel is often the largest single cost of a call (one
    spectrum per output x input channel), so the spectra of recent calls are
    kept, keyed by the weight's bytes, up to ``config.fft_kernel_cache_bytes``
    in all (0 turns this off). A repeated call with equal weights skips it.
    """
    real = plan.dtype.kind == "f"
    key = None
    limit = config.fft_kernel_cache_bytes
    if limit > 0:
        digest = hashlib.blake2b(np.ascontiguousarray(w5).view(np.uint8), digest_size=16).hexdigest()
        key = (digest, w5.shape, w5.dtype.str, tuple(lens), plan.dilation)
        with _SPECTRA_LOCK:
            hit = _SPECTRA.get(key)
            if hit is not None:
                _SPECTRA.move_to_end(key)
                return hit
    spans = [_span(plan, i) for i in range(3)]
    o, cg = w5.shape[0], w5.shape[1]
    # the dilated kernel, flipped: correlation = convolution with the flip
    wd = np.zeros((o, cg) + tuple(spans), dtype=plan.dtype)
    wd[:, :, :: plan.dilation[0], :: plan.dilation[1], :: plan.dilation[2]] = w5
    wd = wd[:, :, ::-1, ::-1, ::-1]
    # transform the small kernel axis by axis (the zero padding of the later
    # axes is not transformed): 3x cheaper than rfftn for a 31x31 kernel at 288
    if real:
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
    kspec = np.ascontiguousarray(kspec.reshape(o, cg, -1))
    kspec.flags.writeable = False
    result = (kspec, fshape)
    if key is not None and kspec.nbytes <= limit:
        with _SPECTRA_LOCK:
            _SPECTRA[key] = result
            while sum(v[0].nbytes for v in _SPECTRA.values()) > limit:
                _SPECTRA.popitem(last=False)
    return result


def _correlate(x5, w5, bias, plan, out5, window):
    """Correlation of the padded input (read through ``window(dim, start,
    length)``) with ``w5``, overlap-save in tiles, strided outputs into ``out5``."""
    real = plan.dtype.kind == "f"
    workers = numba.get_num_threads()
    tiles, lens = _tile_plan(plan)
    spans = [_span(plan, i) for i in range(3)]
    o = plan.c_out
    kspec, fshape = _kernel_spectrum(w5, plan, lens, workers)
    need = [_valid_len(plan, i) for i in range(3)]
    # transform only the axes longer than 1 (the last one always: rfft's axis)
    axes = tuple(ax for ax in (2, 3) if lens[ax - 2] > 1) + (4,)
    tlens = tuple(lens[ax - 2] for ax in axes)
    n = plan.batch
    yspec = np.empty((n, o, kspec.shape[2]), dtype=kspec.dtype)
    bias_b = None if bias is None else bias.reshape(1, o, 1, 1, 1)
    ranges = [range(0, need[i], tiles[i]) for i in range(3)]
    # the tile at the full FFT lengths: its input part is T + span - 1 positions
    # per dim, the rest stays zero (so SciPy does not copy to pad it)
    full_tile = np.zeros((n, plan.c_in) + tuple(lens), plan.dtype)
    ext = tuple(min(lens[i], tiles[i] + spans[i] - 1) for i in range(3))
    tile = full_tile[:, :, : ext[0], : ext[1], : ext[2]]
    for t0 in itertools.product(*ranges):
        maps = [window(i, t0[i], ext[i]) for i in range(3)]
        _gather_tile(x5, tile, maps[0], maps[1], maps[2])
        xspec = _forward(full_tile, axes, workers, real)
        _contract(np.ascontiguousarray(xspec.reshape(n, plan.c_in, -1)), kspec, yspec, plan.groups)
        del xspec
        full = _inverse(yspec.reshape((n, o) + fshape), tlens, axes, workers, real)
        # stride-1 outputs t0 .. t0 + T - 1 sit at span - 1 .. span - 2 + T of the tile;
        # keep those on the stride grid
        sl_out, sl_tile = [], []
        for i in range(3):
            t_end = min(t0[i] + tiles[i], need[i])
            s = plan.stride[i]
            first = -(-t0[i] // s)  # first output index o with o * s >= t0
            last = (t_end - 1) // s
            if last < first:
                break
            sl_out.append(slice(first, last + 1))
            a = first * s - t0[i] + spans[i] - 1
            sl_tile.append(slice(a, a + (last - first) * s + 1, s))
        else:
            dst = out5[(slice(None), slice(None)) + tuple(sl_out)]
            dst[...] = full[(slice(None), slice(None)) + tuple(sl_tile)]
            if bias_b is not None:
                dst += bias_b
    return out5
