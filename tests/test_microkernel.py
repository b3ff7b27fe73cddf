"""The micro-kernel layer (numbaconv/cpu/microkernel.py): every shape against
NumPy at 4, 8 and 16 lanes (AVX2- and NEON-sized blocks are tested on any
host), float32 and float64, every tail, NaN/Inf, and the vector width of the
generated assembly."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from numbaconv import config
from numbaconv.cpu import microkernel as mk

LANES = [4, 8, 16]
DTYPES = ["float32", "float64"]


def _tol(dtype, k, scale):
    return 8 * np.finfo(dtype).eps * np.sqrt(max(k, 1)) * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("block", [(6, 4), (3, 2), (1, 1)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_gemm_every_tail(block, lanes, dtype):
    """Rows, columns and k that do not fill a block (and k = 0, 1)."""
    rng = np.random.default_rng(0)
    nr = block[1] * lanes
    for m, n, k in [
        (block[0], nr, 7),
        (block[0] + 1, nr + 1, 1),
        (2 * block[0] - 1, 3 * nr - 5, 33),
        (5, 3, 0),
    ]:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        got = mk.gemm(a, b, lanes=lanes, block=block)
        assert got.dtype == np.dtype(dtype) and got.shape == (m, n)
        scale = float(np.abs(a).sum(axis=1).max() * np.abs(b).max()) if k else 1.0
        np.testing.assert_allclose(got, ref, rtol=0, atol=_tol(dtype, k, scale))


def _run_block(dtype, rows, vectors, lanes, a_bcast, b_bcast, a, b, c, k, a0, ak, ar, b0, bk, c0, ldc):
    call = mk.block_call(dtype, rows, vectors, lanes, a_bcast, b_bcast)
    call(a, b, c, k, a0, ak, ar, b0, bk, c0, ldc)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_vector_times_vector_depthwise_shape(lanes, dtype):
    """acc[r, j] += A[a0 + i*ak + r*ar + j] * B[b0 + i*bk + j]: lanes over channels,
    rows over output pixels, k over taps (strided, offset operands)."""
    rng = np.random.default_rng(1)
    rows, vectors, k = 3, 2, 5
    width = vectors * lanes
    ak, ar, bk, ldc = width + 3, 2 * width + 7, width + 1, width + 2
    a = rng.standard_normal(11 + k * ak + rows * ar + width).astype(dtype)
    b = rng.standard_normal(4 + k * bk + width).astype(dtype)
    c = rng.standard_normal(6 + rows * ldc).astype(dtype)
    want = c.astype(np.float64).copy()
    for r in range(rows):
        for i in range(k):
            want[6 + r * ldc : 6 + r * ldc + width] += (
                a[11 + i * ak + r * ar : 11 + i * ak + r * ar + width].astype(np.float64)
                * b[4 + i * bk : 4 + i * bk + width]
            )
    _run_block(dtype, rows, vectors, lanes, False, False, a, b, c, k, 11, ak, ar, 4, bk, 6, ldc)
    np.testing.assert_allclose(c, want, rtol=0, atol=_tol(dtype, k, 10.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_vector_times_broadcast_row_shape(lanes, dtype):
    """acc[r, j] += A[a0 + i*ak + r*ar + j] * B[b0 + i*bk]: lanes over the output
    pixels of a row, a scalar tap weight broadcast (a single-channel filter)."""
    rng = np.random.default_rng(2)
    rows, vectors, k = 2, 3, 7
    width = vectors * lanes
    ak, ar, bk, ldc = 1, width + 9, 2, width  # taps one input apart, weights two apart
    a = rng.standard_normal(3 + k * ak + rows * ar + width).astype(dtype)
    b = rng.standard_normal(1 + k * bk).astype(dtype)
    c = np.zeros(rows * ldc, dtype)
    want = np.zeros(rows * ldc)
    for r in range(rows):
        for i in range(k):
            want[r * ldc : (r + 1) * ldc] += a[3 + i + r * ar : 3 + i + r * ar + width] * float(b[1 + i * bk])
    _run_block(dtype, rows, vectors, lanes, False, True, a, b, c, k, 3, ak, ar, 1, bk, 0, ldc)
    np.testing.assert_allclose(c, want, rtol=0, atol=_tol(dtype, k, 10.0))


def test_nan_and_inf_propagate():
    """No fast-math flags: NaN and Inf reach exactly the outputs they touch."""
    a = np.ones((7, 4), np.float32)
    b = np.ones((4, 20), np.float32)
    a[2, 1] = np.nan
    b[3, 5] = np.inf
    got = mk.gemm(a, b, lanes=8, block=(6, 2))
    ref = a.astype(np.float64) @ b
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))


def test_refuses_other_dtypes_and_two_broadcasts():
    with pytest.raises(ValueError, match="float32 or float64"):
        mk.fma_block("int32", 2, 2, 4, True, False)
    with pytest.raises(ValueError, match="at most one operand"):
        mk.fma_block("float32", 2, 2, 4, True, True)


def test_lanes_and_block_come_from_the_host_unless_set(monkeypatch):
    lanes32, registers = mk.host_simd()
    assert lanes32 in (4, 8, 16) and registers in (16, 32)
    assert mk.lanes_for(np.float32) == lanes32 and mk.lanes_for(np.float64) == max(2, lanes32 // 2)
    assert mk.block_for(np.float32) == ((6, 4) if registers >= 32 else (6, 2))
    monkeypatch.setattr(config, "simd_lanes", 4)
    monkeypatch.setattr(config, "simd_block", (3, 2))
    assert mk.lanes_for(np.float64) == 4 and mk.block_for(np.float32) == (3, 2)


@pytest.mark.parametrize("lanes", [8, 16])
def test_assembly_uses_the_vector_width_asked_for(lanes):
    """Explicit <16 x float> FMAs are zmm instructions where the host has
    AVX-512 (also on Intel hosts whose tuning prefers 256-bit vectors for
    auto-vectorized loops), <8 x float> ymm ones."""
    import llvmlite.binding as llb

    feats = llb.get_host_cpu_features()
    if not feats.get("fma", False):
        pytest.skip("this host has no FMA instructions: LLVM expands llvm.fma in software")
    if lanes == 16 and not feats.get("avx512f", False):
        pytest.skip("this host has no AVX-512: 16-lane vectors are split into ymm halves")
    mk.gemm(np.ones((6, 4), np.float32), np.ones((4, 8 * lanes), np.float32), lanes=lanes, block=(6, 4))
    run = mk._gemm_driver("float32", 6, 4, lanes)(
        np.ones((6, 1), np.float32), np.ones((1, 4 * lanes), np.float32)
    )[2]
    asm = run.inspect_asm(run.signatures[0])
    reg = "zmm" if lanes == 16 else "ymm"
    fmas = [line for line in asm.splitlines() if "vfmadd" in line]
    assert sum(reg in line for line in fmas) >= 24, (reg, fmas[:5])


@njit
def _call_taps6(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec):
    mk.fma_taps(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, 6, 4, 0, 1)


def test_block_loops_are_not_unrolled():
    """The register blocks' loops carry every accumulator: LLVM unrolled
    them (the tap loop three times, the band block's middle loop twice with
    a remainder) and kept the band block's 24 accumulators on the stack,
    loaded and stored every iteration (a 7x7 depthwise conv ran 1.4x
    slower). Each loop body appears once: exactly its FMAs, and fewer
    vector moves to or from the stack than there are accumulators."""
    import llvmlite.binding as llb

    if not llb.get_host_cpu_features().get("avx512f", False):
        pytest.skip("this host has no AVX-512: 16-lane vectors are split into ymm halves")
    spec = mk.Spec(16, 32)
    f, tab = np.zeros(4096, np.float32), np.zeros(3, np.int64)
    _call_band6(f, f, f, tab, 3, 7, 0, 0, 1, 21, 0, 100, 0, 64, spec)
    _call_taps6(f, f, f, tab, 3, 6, 0, 0, 1, 18, 1, 0, 0, 64, spec)
    # band, 6 rows x 4 vectors: rows 0..s (s < 5), the middle row (all 6), rows e..5 (e >= 1)
    for fn, fmas in ((_call_band6, (15 + 6 + 15) * 4), (_call_taps6, 6 * 4)):
        lines = fn.inspect_asm(fn.signatures[0]).splitlines()
        stack = [line for line in lines if "zmm" in line and "(%rsp)" in line]
        assert sum("vfmadd" in line for line in lines) == fmas, fn
        assert len(stack) < 24, (fn, stack[:4])


def _taps_reference(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, rows, width, table):
    ref = c.astype(np.float64)
    for t in range(nt):
        ta, tb = (t * at, tab[t]) if table == 0 else (tab[t], t * at)
        for i in range(k):
            for r in range(rows):
                av = float(a[a0 + ta + i * ak + r * ar])
                ref[c0 + r * ldc : c0 + r * ldc + width] += (
                    av * b[b0 + tb + i * bk : b0 + tb + i * bk + width]
                )
    return ref


@njit
def _call_taps_px(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec):
    mk.fma_taps(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, 3, 0, 0, 1)


@njit
def _call_taps_px_overwrite(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec):
    mk.fma_taps(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, 3, 0, 0, 0)


@njit
def _call_taps_cl(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec):
    mk.fma_taps(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, 0, 3, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("table", [0, 1], ids=["taps-on-B", "taps-on-A"])
def test_fma_taps_against_numpy(table, lanes, dtype):
    """Both loop orders of the tap kernel, with offsets, strides and an
    indirect tap table, at each lane count; 3 rows (auto vectors) or 3
    vectors (auto rows); k = 0 and nt = 0 leave C as it was."""
    rng = np.random.default_rng(7)
    spec = mk.Spec(lanes, 32)
    rows, vectors = (3, mk.vectors_for(3, 32)) if table == 0 else (mk.rows_for(3, 32), 3)
    width = vectors * lanes
    call = _call_taps_px if table == 0 else _call_taps_cl
    for nt, k in [(4, 5), (1, 1), (3, 0), (0, 4)]:
        tab = rng.integers(0, 50, size=max(nt, 1)).astype(np.int64)
        at, a0, b0, ak, ar, bk, c0 = 9, 3, 5, 2 * rows + 1, 2, width + 3, 4
        ldc = width + 5
        a = rng.standard_normal(a0 + 60 + nt * at + k * ak + rows * ar).astype(dtype)
        b = rng.standard_normal(b0 + 60 + nt * at + k * bk + width).astype(dtype)
        c = rng.standard_normal(c0 + rows * ldc + 3).astype(dtype)
        ref = _taps_reference(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, rows, width, table)
        call(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec)
        scale = float(np.abs(a).max() * np.abs(b).max() * max(nt * k, 1))
        np.testing.assert_allclose(
            c, ref, rtol=0, atol=_tol(dtype, nt * k, scale) + 8 * np.finfo(dtype).eps * 4
        )


@njit
def _call_taps_out(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, bias, store, acc, acc0, lda, spec):
    bo, p0, wq, ow_n, ldh, pend, nrows = store[0], store[1], store[2], store[3], store[4], store[5], store[6]
    mk.fma_taps_out(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, bias, bo, p0, wq, ow_n, ldh, pend,
                    nrows, acc, acc0, lda, spec, 4)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_fma_taps_out_stores_into_the_output_rows(lanes, dtype):
    """The block from the bias (and, with ``lda > 0``, from earlier partial
    sums in ``acc``), stored straight into an output: each pixel of the flat
    run (rows ``wq`` apart) at its row and column of the output (rows
    ``ldh`` apart), nothing for the junk columns past ``ow_n``, the pixels
    from ``pend`` or the rows from ``nrows``; vectors inside one row, across
    a row's end, starting in the junk columns, past the last row; k = 0
    stores the start alone. Every other value of C is left as it was."""
    rng = np.random.default_rng(5)
    spec = mk.Spec(lanes, 32)
    rows, vectors = 4, mk.vectors_for(4, 32)
    width = vectors * lanes
    for wq, ow_n, p0, pend, nrows, nt, k, lda in [
        (lanes + 3, lanes + 1, 0, 9 * (lanes + 3), 4, 3, 5, 0),
        (lanes + 3, lanes, 2, 3 * (lanes + 3), 2, 2, 3, width + 1),
        (2 * lanes, 2 * lanes, lanes, 4 * lanes * 2, 4, 1, 1, 0),
        (lanes, lanes - 1, 0, 3 * lanes, 3, 2, 0, width),
        (3 * lanes + 5, 3 * lanes + 2, 3 * lanes + 3, 2 * (3 * lanes + 5), 1, 4, 2, 0),
    ]:
        tab = rng.integers(0, 30, size=nt).astype(np.int64)
        at, a0, b0, ak, ar, bk, acc0 = 5, 1, 2, nt * 5 + 1, 3, width + 7, 3
        ldh, ldc, c0, bo = ow_n + 2, (pend // wq + 2) * (ow_n + 2), 3, 2
        a = rng.standard_normal(a0 + nt * at + k * ak + rows * ar + 1).astype(dtype)
        b = rng.standard_normal(b0 + 30 + k * bk + width).astype(dtype)
        c = rng.standard_normal(c0 + rows * ldc + 2).astype(dtype)
        bias = rng.standard_normal(bo + nrows).astype(dtype)
        acc = rng.standard_normal(acc0 + rows * max(lda, width)).astype(dtype)
        ref = c.astype(np.float64)
        for r in range(nrows):
            for j in range(width):
                p = p0 + j
                h, w = divmod(p, wq)
                if p >= pend or w >= ow_n:
                    continue
                total = float(bias[bo + r]) + (float(acc[acc0 + r * lda + j]) if lda else 0.0)
                for i in range(k):
                    for t in range(nt):
                        total += float(a[a0 + t * at + i * ak + r * ar]) * float(b[b0 + tab[t] + i * bk + j])
                ref[c0 + r * ldc + h * ldh + w] = total
        store = np.array([bo, p0, wq, ow_n, ldh, pend, nrows], dtype=np.int64)
        _call_taps_out(
            a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, bias, store, acc, acc0, lda, spec
        )
        scale = float(
            np.abs(a).max() * np.abs(b).max() * max(nt * k, 1) + np.abs(bias).max() + np.abs(acc).max()
        )
        np.testing.assert_allclose(c, ref, rtol=0, atol=_tol(dtype, nt * k, scale) + 8 * np.finfo(dtype).eps)


@njit
def _call_taps_rows(a, b, c, tab, nt, at, a0, b0, k, ak, rows_at, bk, c0, ldc, spec):
    mk.fma_taps(a, b, c, tab, nt, at, a0, b0, k, ak, rows_at, bk, c0, ldc, spec, 5, 0, 1, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_fma_taps_with_a_row_table(lanes, dtype):
    """``ar`` as an int64 array: row r of A at ``ar[r]`` (any order, repeats
    allowed), the rest as with a row stride; C overwritten (accumulate 0)."""
    rng = np.random.default_rng(11)
    spec = mk.Spec(lanes, 32)
    rows, vectors = 5, mk.vectors_for(5, 32)
    width = vectors * lanes
    for nt, k in [(3, 7), (1, 1), (2, 0)]:
        tab = rng.integers(0, 40, size=nt).astype(np.int64)
        rows_at = np.array([17, 3, 3, 40, 0], dtype=np.int64)
        at, a0, b0, ak, bk, c0 = 7, 2, 3, 1, width + 1, 5
        ldc = width + 2
        a = rng.standard_normal(a0 + 41 + tab.max() + k * ak).astype(dtype)
        b = rng.standard_normal(b0 + nt * at + k * bk + width).astype(dtype)
        c = rng.standard_normal(c0 + rows * ldc).astype(dtype)
        ref = c.astype(np.float64)
        for r in range(rows):
            ref[c0 + r * ldc : c0 + r * ldc + width] = 0
            for t in range(nt):
                for i in range(k):
                    o = b0 + t * at + i * bk
                    ref[c0 + r * ldc : c0 + r * ldc + width] += (
                        float(a[a0 + tab[t] + i * ak + rows_at[r]]) * b[o : o + width]
                    )
        _call_taps_rows(a, b, c, tab, nt, at, a0, b0, k, ak, rows_at, bk, c0, ldc, spec)
        scale = float(np.abs(a).max() * np.abs(b).max() * max(nt * k, 1))
        np.testing.assert_allclose(c, ref, rtol=0, atol=_tol(dtype, nt * k, scale) + 8 * np.finfo(dtype).eps)


def test_vectors_and_rows_per_register_count():
    """The block shapes fit the registers: accumulators + B vectors + one broadcast."""
    for registers in (16, 32):
        for rows in range(1, 7):
            v = mk.vectors_for(rows, registers)
            assert rows * v + v + 1 <= registers and v >= 1
        for vectors in range(1, 5):
            r = mk.rows_for(vectors, registers)
            assert r * vectors + vectors + 1 <= registers and 1 <= r <= 14
    assert mk.vectors_for(6, 32) == 4 and mk.rows_for(4, 32) == 6


def test_spec_type_carries_lanes_registers_and_source_version():
    """Kernels taking a Spec compile (and cache) once per spec: the Numba type
    names lanes, registers and this file's version."""
    from numba import typeof

    t16, t8 = typeof(mk.Spec(16, 32)), typeof(mk.Spec(8, 16))
    assert t16 != t8 and t16 == typeof(mk.Spec(16, 32))
    assert str(mk.SOURCE_KEY) in str(t16) and "16" in str(t16)
    with config.override(simd_lanes=4, simd_block=(6, 2)):
        s = mk.spec_for(np.float32)
        assert s.lanes == 4 and s.registers == 6 * 2 + 2 + 1


def _band_reference(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, rows, width, accumulate):
    ref = c.astype(np.float64)
    for r in range(rows):
        acc = ref[c0 + r * ldc : c0 + r * ldc + width] if accumulate else np.zeros(width)
        for i in range(k):
            for h in range(kh):
                for t in range(nt):
                    o = b0 + i * bk + (r + h) * rp + tab[t]
                    acc = acc + float(a[a0 + i * ak + h * nt + t]) * b[o : o + width]
        ref[c0 + r * ldc : c0 + r * ldc + width] = acc
    return ref


@njit
def _call_band6(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, spec):
    mk.fma_band(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, 0, 0, 0.0, 0, spec, 6, 0, 1)


@njit
def _call_band3(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, spec):
    mk.fma_band(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, 0, 0, 0.0, 0, spec, 3, 2, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("shape", [(6, 0, 1), (3, 2, 0)], ids=["6rows-auto-acc", "3rows-2vec-overwrite"])
def test_fma_band_against_numpy(shape, lanes, dtype):
    """The band block (rows of one output channel sharing each input row):
    kernel rows from rows - 1 (no middle loop) up, several channels with
    their own strides, an indirect tap table, k = 0 and nt = 0 (C kept when
    accumulating, zeros when overwriting)."""
    rows, vectors, accumulate = shape
    vectors = vectors or mk.vectors_for(rows, 32)
    width = vectors * lanes
    rng = np.random.default_rng(11)
    spec = mk.Spec(lanes, 32)
    call = _call_band6 if rows == 6 else _call_band3
    for kh, nt, k in [(rows - 1, 3, 1), (rows, 1, 2), (rows + 3, 4, 3), (rows + 1, 0, 2), (rows - 1, 2, 0)]:
        tab = rng.integers(0, 20, size=max(nt, 1)).astype(np.int64)
        a0, b0, c0, rp = 3, 5, 2, width + 7
        ak, bk, ldc = kh * nt + 2, (rows + kh) * rp + 30, width + 3
        a = rng.standard_normal(a0 + max(k, 1) * ak + 5).astype(dtype)
        b = rng.standard_normal(b0 + max(k, 1) * bk + 40 + width).astype(dtype)
        c = rng.standard_normal(c0 + rows * ldc + 3).astype(dtype)
        ref = _band_reference(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, rows, width, accumulate)
        call(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, spec)
        scale = float(np.abs(a).max() * np.abs(b).max() * max(nt * k * kh, 1))
        np.testing.assert_allclose(
            c, ref, rtol=0, atol=_tol(dtype, nt * k * kh, scale) + 8 * np.finfo(dtype).eps * 4
        )


@njit
def _call_band_target(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, cnt, nrows, bias, add, spec):
    mk.fma_band(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, cnt, nrows, bias, add, spec, 6, 0, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_fma_band_into_the_target(lanes, dtype):
    """Mode 2: the block read and written in place in C (the output) through
    masks: rows below nrows, columns below cnt (a whole block: plain
    stores); from the bias, or added to C (add); nothing else of C
    changes, NaN and Inf in the block reach C."""
    rows, vectors = 6, mk.vectors_for(6, 32)
    width = vectors * lanes
    rng = np.random.default_rng(12)
    spec = mk.Spec(lanes, 32)
    kh, nt, k = 7, 3, 2
    tab = rng.integers(0, 20, size=nt).astype(np.int64)
    a0, b0, c0, rp = 3, 5, 2, width + 7
    ak, bk, ldc = kh * nt + 2, (rows + kh) * rp + 30, width + 5
    a = rng.standard_normal(a0 + k * ak + 5).astype(dtype)
    b = rng.standard_normal(b0 + k * bk + 40 + width).astype(dtype)
    b[b0 + 2 * rp + 1] = np.nan
    zeros = np.zeros(c0 + rows * ldc + 3, dtype)
    full = _band_reference(a, b, zeros, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, rows, width, 0)
    tol = _tol(dtype, nt * k * kh, float(np.abs(a).max() * np.nanmax(np.abs(b)) * nt * k * kh))
    nans = 0
    for cnt, nrows, add in [
        (width, rows, 0),
        (width + 3, rows + 2, 1),  # whole block, added into C (plain stores)
        (width - lanes // 2 - 1, 4, 0),
        (1, 1, 1),
        (lanes + 1, 9, 1),
        (3, 0, 0),
    ]:
        c = rng.standard_normal(c0 + rows * ldc + 3).astype(dtype)
        want = c.astype(np.float64)
        for r in range(min(rows, nrows)):
            seg = slice(c0 + r * ldc, c0 + r * ldc + min(cnt, width))
            want[seg] = full[seg] + (want[seg] if add else 0.75)
        _call_band_target(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, cnt, nrows, 0.75, add, spec)
        np.testing.assert_allclose(c, want, rtol=0, atol=tol)
        nans += np.isnan(want).sum()  # NaN where the reference has it (assert_allclose)
    assert nans > 0


@njit
def _call_band_ints(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, bias, spec):
    mk.fma_band(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, 0, 0, bias, 0, spec, 4, 0, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("target", ["uint8", "int8", "int16", "uint16", "int32", "uint32"])
def test_fma_band_into_an_integer_target(target, lanes, dtype):
    """Mode 3: the whole block from the bias, each value truncated toward
    zero through int32 and wrapped to C's integer type (as NumPy casts an
    int32); nothing else of C changes."""
    rows, vectors = 4, mk.vectors_for(4, 32)
    width = vectors * lanes
    rng = np.random.default_rng(13)
    spec = mk.Spec(lanes, 32)
    kh, nt, k = 5, 2, 1
    tab = np.array([0, 3], np.int64)
    a0, b0, c0, rp = 1, 2, 3, width + 5
    ak, bk, ldc = kh * nt, (rows + kh) * rp + 10, width + 2
    a = rng.standard_normal(a0 + ak + 3).astype(dtype)
    b = (rng.standard_normal(b0 + bk + 20 + width) * 300).astype(dtype)
    zeros = np.zeros(c0 + rows * ldc + 3, np.float64)
    ref = _band_reference(a, b, zeros, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, rows, width, 0)
    c = rng.integers(0, 100, c0 + rows * ldc + 3).astype(target)
    want = c.copy()
    for r in range(rows):
        seg = slice(c0 + r * ldc, c0 + r * ldc + width)
        want[seg] = np.trunc(ref[seg] - 2.5).astype(np.int32).astype(target)
    _call_band_ints(a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, -2.5, spec)
    # the sums in dtype may round across an integer: at most one unit (mod the type's range)
    diff = (c.astype(np.int64) - want.astype(np.int64)) % (1 << (8 * np.dtype(target).itemsize))
    assert np.isin(diff, [0, 1, (1 << (8 * np.dtype(target).itemsize)) - 1]).all()
    assert (diff == 0).mean() > 0.95
    assert (ref[c0 : c0 + width] - 2.5 < 0).any()  # negative values wrap


@njit
def _run_set(d, d0, s, s0, n, bias, spec):
    mk.vector_run(d, d0, s, s0, n, bias, 1, spec)


@njit
def _run_copy(d, d0, s, s0, n, spec):
    mk.vector_run(d, d0, s, s0, n, 0.0, 0, spec)


@njit
def _run_add(d, d0, s, s0, n, spec):
    mk.vector_run(d, d0, s, s0, n, 0.0, 2, spec)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_vector_run_every_length(lanes, dtype):
    """Copy, copy plus a scalar and add of n values for every n up to three
    vectors and a bit (whole vectors, then one masked vector): exactly
    [d0, d0 + n) changes, NaN and Inf pass through."""
    rng = np.random.default_rng(3)
    spec = mk.Spec(lanes, 32)
    for n in range(3 * lanes + 2):
        src = rng.standard_normal(n + 9).astype(dtype)
        src[min(n, 5) - 1 :: 7] = np.nan if n % 2 else np.inf
        for d0, s0 in [(0, 0), (3, 7)]:
            dst = rng.standard_normal(n + 12).astype(dtype)
            want = dst.copy()
            want[d0 : d0 + n] = src[s0 : s0 + n]
            got = dst.copy()
            _run_copy(got, d0, src, s0, n, spec)
            np.testing.assert_array_equal(got, want)
            want[d0 : d0 + n] = src[s0 : s0 + n] + np.dtype(dtype).type(0.5)
            _run_set(got, d0, src, s0, n, 0.5, spec)
            np.testing.assert_array_equal(got, want)
            want[d0 : d0 + n] += src[s0 : s0 + n]
            _run_add(got, d0, src, s0, n, spec)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("src_dtype", ["uint8", "int8", "uint16", "int16"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_vector_run_converts_integer_sources(lanes, dtype, src_dtype):
    """Mode 0 from 8/16-bit integers (the direct path's tiles of integer
    images): each value converted exactly, signed and unsigned extremes
    included, every length."""
    info = np.iinfo(src_dtype)
    spec = mk.Spec(lanes, 32)
    for n in range(3 * lanes + 2):
        src = np.resize(np.array([info.min, info.max, 0, 1, info.max - 1, info.min + 1], src_dtype), n + 9)
        for d0, s0 in [(0, 0), (3, 7)]:
            dst = np.full(n + 12, -3.5, dtype)
            want = dst.copy()
            want[d0 : d0 + n] = src[s0 : s0 + n].astype(dtype)
            _run_copy(dst, d0, src, s0, n, spec)
            np.testing.assert_array_equal(dst, want)


@njit
def _run_every_other(d, d0, s, s0, n, spec):
    mk.vector_run(d, d0, s, s0, n, 0.0, 4, spec)


@pytest.mark.parametrize("src_dtype", ["same", "uint8", "int16"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_vector_run_stride_two(lanes, dtype, src_dtype):
    """Mode 4, a stride-2 phase of a row: ``dst[d0 + i] = src[s0 + 2 i]`` for
    every length, reading no further than the last value it takes (the
    source ends there: the last vector's loads are masked)."""
    sdt = dtype if src_dtype == "same" else src_dtype
    spec = mk.Spec(lanes, 32)
    for n in range(3 * lanes + 3):
        for d0, s0 in [(0, 0), (3, 5)]:
            src = (np.arange(s0 + max(2 * n - 1, 0)) % 97 - 40 * (sdt != "uint8")).astype(sdt)
            dst = np.full(n + 7, -3.5, dtype)
            want = dst.copy()
            want[d0 : d0 + n] = src[s0 : s0 + 2 * n : 2].astype(dtype)
            _run_every_other(dst, d0, src, s0, n, spec)
            np.testing.assert_array_equal(dst, want)


@njit
def _run_spread(d, d0, s, s0, n, bias, spec):
    mk.vector_run(d, d0, s, s0, n, bias, 5, spec)


@njit
def _run_spread_add(d, d0, s, s0, n, spec):
    mk.vector_run(d, d0, s, s0, n, 0.0, 6, spec)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_vector_run_stores_every_other(lanes, dtype):
    """Modes 5 and 6, a stride-2 phase of a transposed op's output row:
    ``dst[d0 + 2 i] = src[s0 + i] + bias`` (and ``+=``) for every length;
    the odd positions and everything past the run keep their values (the
    other phase's, written by another thread), NaN and Inf pass through.
    With 512-bit vectors masked stores of every other lane, else scalars:
    both are run here (lanes 4 to 16, float32 and float64)."""
    rng = np.random.default_rng(5)
    spec = mk.Spec(lanes, 32)
    for n in range(3 * lanes + 2):
        for d0, s0 in [(0, 0), (3, 5)]:
            src = rng.standard_normal(s0 + n + 3).astype(dtype)
            src[s0 + 1 :: 5] = np.nan if n % 2 else np.inf
            dst = rng.standard_normal(d0 + 2 * n + 2 * lanes).astype(dtype)
            want = dst.copy()
            want[d0 : d0 + 2 * n : 2] = src[s0 : s0 + n] + np.dtype(dtype).type(0.25)
            _run_spread(dst, d0, src, s0, n, 0.25, spec)
            np.testing.assert_array_equal(dst, want)
            want[d0 : d0 + 2 * n : 2] += src[s0 : s0 + n]
            _run_spread_add(dst, d0, src, s0, n, spec)
            np.testing.assert_array_equal(dst, want)


@njit
def _transpose0(dst, d0, ds, dn, dl, src, s0, ss, sn, sl, bias, b0, spec):
    mk.transpose_block(dst, d0, ds, dn, dl, src, s0, ss, sn, sl, bias, b0, 0, spec)


@njit
def _transpose1(dst, d0, ds, dn, dl, src, s0, ss, sn, sl, bias, b0, spec):
    mk.transpose_block(dst, d0, ds, dn, dl, src, s0, ss, sn, sl, bias, b0, 1, spec)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_transpose_block_against_numpy(lanes, dtype):
    """dst[d0 + j*ds + i] = src[s0 + i*ss + j] (+ bias[b0 + j]) for the
    source rows and lanes asked (0 in destination lanes past the source
    rows), every count from 0 to lanes (whole blocks among them: plain
    loads and stores), float and 8/16-bit integer sources; nothing else of
    dst is written, exactly."""
    rng = np.random.default_rng(13)
    spec = mk.Spec(lanes, 32)
    for sdt in (dtype, np.uint8, np.int16):
        # whole blocks (plain stores), whole in but not out, out but not in; then random
        forced = [(lanes,) * 4, (lanes, lanes, lanes, lanes - 1), (lanes - 1, lanes, lanes, lanes)]
        for trial in range(25):
            drawn = (int(v) for v in rng.integers(0, lanes + 1, size=4))
            sn, sl, dn, dl = forced[trial] if trial < 3 else drawn
            ss, ds = lanes + int(rng.integers(0, 9)), lanes + int(rng.integers(0, 9))
            s0, d0, b0 = 3, 5, 2
            src = (rng.standard_normal(s0 + lanes * ss + lanes + 4) * 50).astype(sdt)
            dst = rng.standard_normal(d0 + lanes * ds + lanes + 4).astype(dtype)
            bias = rng.standard_normal(b0 + lanes + 3).astype(dtype)
            for mode, call in ((0, _transpose0), (1, _transpose1)):
                want = dst.astype(np.float64)
                for j in range(min(dn, sl)):
                    for i in range(dl):
                        v = float(src[s0 + i * ss + j]) if i < sn else 0.0
                        want[d0 + j * ds + i] = v + (float(bias[b0 + j]) if mode else 0.0)
                got = dst.copy()
                call(got, d0, ds, dn, dl, src, s0, ss, sn, sl, bias, b0, spec)
                what = str((sdt, mode, sn, sl, dn, dl))
                np.testing.assert_array_equal(got, want.astype(dtype), err_msg=what)


@njit
def _taps_vv(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec):
    mk.fma_taps_vv(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, 8, 0, 1, 1)


@njit
def _taps_vv2(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec):
    mk.fma_taps_vv(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, 3, 2, 1, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lanes", LANES)
def test_fma_taps_vv_against_numpy(lanes, dtype):
    """The vector x vector tap block (A a vector per row and tap, B a vector
    per tap shared by the rows): 8 rows x auto vectors accumulating, 3 x 2
    overwriting, k of 0 to 3, an indirect tap table, nt = 0."""
    rng = np.random.default_rng(14)
    spec = mk.Spec(lanes, 32)
    for call, rows, vectors, accumulate in ((_taps_vv, 8, mk.vectors_for(8, 32), 1), (_taps_vv2, 3, 2, 0)):
        width = vectors * lanes
        for nt, k in [(3, 1), (1, 2), (5, 3), (0, 2), (2, 0)]:
            tab = rng.integers(0, 30, size=max(nt, 1)).astype(np.int64)
            at, ak, ar, bk = width + 1, 2 * width + 5, width + 3, nt * (width + 1) + 7
            a0, b0, c0, ldc = 3, 4, 2, width + 5
            a = rng.standard_normal(a0 + 40 + max(k, 1) * ak + rows * ar + width).astype(dtype)
            b = rng.standard_normal(b0 + max(k, 1) * bk + nt * at + width).astype(dtype)
            c = rng.standard_normal(c0 + rows * ldc + 3).astype(dtype)
            ref = c.astype(np.float64)
            for r in range(rows):
                acc = ref[c0 + r * ldc : c0 + r * ldc + width] if accumulate else np.zeros(width)
                for t in range(nt):
                    for i in range(k):
                        oa = a0 + tab[t] + i * ak + r * ar
                        ob = b0 + t * at + i * bk
                        acc = acc + a[oa : oa + width].astype(np.float64) * b[ob : ob + width]
                ref[c0 + r * ldc : c0 + r * ldc + width] = acc
            call(a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec)
            scale = float(np.abs(a).max() * np.abs(b).max() * max(nt * k, 1))
            atol = _tol(dtype, nt * k, scale) + 4 * np.finfo(dtype).eps
            np.testing.assert_allclose(c, ref, rtol=0, atol=atol)


def test_prefetch_is_a_hint():
    """microkernel.prefetch compiles to llvm.prefetch and leaves every value
    as it was (the band tasks' next input rows)."""
    from numba import njit

    from numbaconv.cpu.microkernel import prefetch

    @njit
    def touch(a):
        for i in range(0, a.size, 16):
            prefetch(a, i)
        prefetch(a, a.size - 1)
        return a.sum()

    a = np.arange(100, dtype=np.float32)
    before = a.copy()
    assert touch(a) == before.sum()
    np.testing.assert_array_equal(a, before)
    ir = next(iter(touch.inspect_llvm().values()))
    assert "llvm.prefetch" in ir
