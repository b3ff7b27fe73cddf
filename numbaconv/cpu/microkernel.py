"""Register-blocked FMA micro-kernels: Numba intrinsics that emit LLVM vector IR.

One generator, :func:`fma_block`, makes a kernel that adds into a block of
``rows x (vectors * lanes)`` values of C::

    C[r, v*L + l] += sum_k A(k, r, v, l) * B(k, v, l)

with the accumulators held in vector registers across the k loop (LLVM phis),
``llvm.fma`` on ``<lanes x T>`` values, and each operand either a **vector**
(``lanes`` consecutive values at ``base + k*sk + r*sr + v*lanes``; B has no
row term: it is loaded once per k and shared by the rows) or a **broadcast**
scalar (the value at ``base + k*sk + r*sr``, splatted by a shuffle). The shapes the convolution paths need are:

- broadcast-A x vector-B (lanes over output channels: CNN layers, GEMM on
  packed panels), ``a_bcast=True``;
- vector-A x vector-B, no broadcast (lanes over channels: depthwise),
  ``a_bcast=False, b_bcast=False``;
- vector-A x broadcast-B (lanes over the output pixels of a row: single- and
  few-channel filters), ``b_bcast=True``.

Only target-independent IR is emitted (vector types, ``llvm.fma.*``,
shuffles), so the kernels are correct on any CPU LLVM targets; the lane count
and register block come from the host (:func:`host_simd`) unless
``config.simd_lanes`` / ``config.simd_block`` say otherwise. Tails (rows,
columns or k that do not fill a block) are the caller's: a block computed
into a scratch tile and the valid part copied, as :func:`gemm` does.
"""

from __future__ import annotations

import functools

import llvmlite.binding as llb
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import config
from ..runtime import njit


def host_simd() -> tuple[int, int]:
    """(float32 lanes of the widest vector, vector registers) of this CPU, as
    LLVM sees it: AVX-512 16 and 32, AVX2 8 and 16, otherwise 4 and 16 (SSE,
    NEON)."""
    feats = llb.get_host_cpu_features()
    if feats.get("avx512f", False):
        return 16, 32
    if feats.get("avx2", False) or feats.get("avx", False):
        return 8, 16
    return 4, 16


def lanes_for(dtype) -> int:
    """Lanes per vector for ``dtype``: ``config.simd_lanes`` if set, else the
    host's widest vector (float64 and complex halve it)."""
    if config.simd_lanes:
        return int(config.simd_lanes)
    lanes32, _ = host_simd()
    return max(2, lanes32 * 4 // np.dtype(dtype).itemsize)


def block_for(dtype) -> tuple[int, int]:
    """(rows, vectors) of the register block: ``config.simd_block`` if set, else
    as many accumulators as the registers hold beside the operands (32
    registers: 6 x 4 = 24 accumulators + 4 B vectors + 1 broadcast; 16: 6 x 2)."""
    if config.simd_block:
        rows, vectors = config.simd_block
        return int(rows), int(vectors)
    _, registers = host_simd()
    return (6, 4) if registers >= 32 else (6, 2)


_LLVM_TYPES = {"float32": ir.FloatType(), "float64": ir.DoubleType()}
_FMA_NAMES = {"float32": "f32", "float64": "f64"}


@functools.cache
def fma_block(dtype: str, rows: int, vectors: int, lanes: int, a_bcast: bool, b_bcast: bool):
    """The intrinsic ``kernel(a, b, c, k, a0, ak, ar, b0, bk, c0, ldc)``:
    ``C[c0 + r*ldc + v*lanes + l] += sum_{i<k} A * B`` where A at step ``i`` of
    row ``r`` starts at ``a0 + i*ak + r*ar`` and B at ``b0 + i*bk`` (each +
    ``v*lanes`` when a vector). All offsets are in elements of 1-D contiguous
    arrays."""
    if dtype not in _LLVM_TYPES:
        raise ValueError(f"micro-kernels take float32 or float64, got {dtype!r}")
    if a_bcast and b_bcast:
        raise ValueError("at most one operand may be broadcast")
    scalar = _LLVM_TYPES[dtype]
    align = np.dtype(dtype).itemsize

    @intrinsic
    def kernel(typingctx, a, b, c, k, a0, ak, ar, b0, bk, c0, ldc):
        sig = types.void(a, b, c, k, a0, ak, ar, b0, bk, c0, ldc)

        def codegen(context, builder, signature, args):
            aa, bb, cc, kk, a0_, ak_, ar_, b0_, bk_, c0_, ld = args
            vt = ir.VectorType(scalar, lanes)
            i64 = ir.IntType(64)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{lanes}{_FMA_NAMES[dtype]}"
            )

            def data(i, value):
                return context.make_array(signature.args[i])(context, builder, value).data

            pa, pb, pc = data(0, aa), data(1, bb), data(2, cc)
            const = lambda v: ir.Constant(i64, v)  # noqa: E731

            def cptr(r, v):
                off = builder.add(c0_, builder.add(builder.mul(const(r), ld), const(v * lanes)))
                return builder.bitcast(builder.gep(pc, [off]), vt.as_pointer())

            zero = const(0)
            entry = builder.block
            init = [builder.load(cptr(r, v), align=align) for r in range(rows) for v in range(vectors)]
            loop = builder.append_basic_block("ukernel.loop")
            done = builder.append_basic_block("ukernel.done")
            builder.cbranch(builder.icmp_signed(">", kk, zero), loop, done)
            builder.position_at_end(loop)
            step = builder.phi(i64)
            step.add_incoming(zero, entry)
            acc = []
            for v in init:
                phi = builder.phi(vt)
                phi.add_incoming(v, entry)
                acc.append(phi)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

            def operand(ptr, base, sk, sr, r, v, bcast):
                off = builder.add(base, builder.add(builder.mul(step, sk), builder.mul(const(r), sr)))
                if bcast:
                    s = builder.load(builder.gep(ptr, [off]), align=align)
                    one = builder.insert_element(
                        ir.Constant(vt, ir.Undefined), s, ir.Constant(ir.IntType(32), 0)
                    )
                    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), splat)
                off = builder.add(off, const(v * lanes))
                return builder.load(builder.bitcast(builder.gep(ptr, [off]), vt.as_pointer()), align=align)

            new = []
            bvec = [operand(pb, b0_, bk_, zero, 0, v, b_bcast) for v in range(vectors)]
            for r in range(rows):
                a_row = operand(pa, a0_, ak_, ar_, r, 0, True) if a_bcast else None
                for v in range(vectors):
                    av = a_row if a_bcast else operand(pa, a0_, ak_, ar_, r, v, False)
                    new.append(builder.call(fma, [av, bvec[v], acc[r * vectors + v]]))
            nxt = builder.add(step, const(1))
            end = builder.block
            step.add_incoming(nxt, end)
            for phi, v in zip(acc, new):
                phi.add_incoming(v, end)
            builder.cbranch(builder.icmp_signed("<", nxt, kk), loop, done)
            builder.position_at_end(done)
            final = []
            for i in range(rows * vectors):  # every phi first, then the stores
                phi = builder.phi(vt)
                phi.add_incoming(init[i], entry)
                phi.add_incoming(new[i], end)
                final.append(phi)
            for i, phi in enumerate(final):
                builder.store(phi, cptr(i // vectors, i % vectors), align=align)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


@functools.cache
def _gemm_driver(dtype: str, rows: int, vectors: int, lanes: int):
    """A parallel ``C = A @ B`` on packed panels with the broadcast-A kernel:
    tiles of ``rows x (vectors*lanes)``; column panels outermost so a B panel
    stays in cache across the row panels; edge tiles in a scratch tile."""
    uk = fma_block(dtype, rows, vectors, lanes, True, False)
    nr = vectors * lanes
    nbt = np.dtype(dtype).type

    @njit(parallel=True)  # closes over a generated intrinsic: compiled per process, not cached
    def run(ap, bp, c, m, n, k, mt, nt):
        for t in prange(mt * nt):
            tn = t // mt
            tm = t - tn * mt
            if (tm + 1) * rows <= m and (tn + 1) * nr <= n:
                uk(ap, bp, c, k, tm * k * rows, rows, 1, tn * k * nr, nr, tm * rows * n + tn * nr, n)
            else:
                tile = np.zeros(rows * nr, dtype=c.dtype)
                uk(ap, bp, tile, k, tm * k * rows, rows, 1, tn * k * nr, nr, 0, nr)
                for r in range(min(rows, m - tm * rows)):
                    for j in range(min(nr, n - tn * nr)):
                        c[(tm * rows + r) * n + tn * nr + j] = tile[r * nr + j]
        return c

    def gemm(a, b):
        m, k = a.shape
        n = b.shape[1]
        mt, nt = -(-m // rows), -(-n // nr)
        ap = np.zeros((mt * rows, k), dtype=nbt)
        ap[:m] = a
        ap = np.ascontiguousarray(ap.reshape(mt, rows, k).transpose(0, 2, 1)).ravel()
        bp = np.zeros((k, nt * nr), dtype=nbt)
        bp[:, :n] = b
        bp = np.ascontiguousarray(bp.reshape(k, nt, nr).transpose(1, 0, 2)).ravel()
        c = np.zeros(m * n, dtype=nbt)
        return run(ap, bp, c, m, n, k, mt, nt).reshape(m, n), (ap, bp, c, m, n, k, mt, nt), run

    return gemm


def gemm(a, b, *, lanes: int | None = None, block: tuple[int, int] | None = None):
    """``a @ b`` (2-D, float32 or float64) on the micro-kernel: the reference
    driver of this layer, used by its tests and to measure its rate."""
    dtype = np.result_type(a, b)
    rows, vectors = block or block_for(dtype)
    fn = _gemm_driver(dtype.name, rows, vectors, lanes or lanes_for(dtype))
    return fn(np.asarray(a, dtype), np.asarray(b, dtype))[0]


def measure_rate(n: int = 1536, repeat: int = 5) -> dict:
    """GFLOP/s of the micro-kernel GEMM (float32, n x n x n, packing excluded)
    beside numpy's float32 GEMM on the same product, best of ``repeat``."""
    import time

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    rows, vectors = block_for(np.float32)
    lanes = lanes_for(np.float32)
    fn = _gemm_driver("float32", rows, vectors, lanes)
    _, args, run = fn(a, b)

    def best(call):
        t = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            t = min(t, time.perf_counter() - t0)
        return 2 * n**3 / t / 1e9

    uk = best(lambda: run(*args))
    np_rate = best(lambda: a @ b)
    return {"lanes": lanes, "block": [rows, vectors], "ukernel_gflops": uk, "numpy_gflops": np_rate}


@functools.cache
def block_call(dtype: str, rows: int, vectors: int, lanes: int, a_bcast: bool, b_bcast: bool):
    """An njit function calling :func:`fma_block`'s kernel once, with the same
    arguments (for callers outside njit code, and the tests)."""
    uk = fma_block(dtype, rows, vectors, lanes, a_bcast, b_bcast)

    @njit
    def call(a, b, c, k, a0, ak, ar, b0, bk, c0, ldc):
        uk(a, b, c, k, a0, ak, ar, b0, bk, c0, ldc)

    return call
