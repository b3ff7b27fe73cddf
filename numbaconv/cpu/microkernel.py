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
import zlib
from pathlib import Path

import llvmlite.binding as llb
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from .. import config
from ..runtime import njit


@functools.cache
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


def vectors_for(rows: int, registers: int) -> int:
    """Vectors per row of a broadcast-A block of ``rows`` rows: as many
    accumulators as the registers hold beside the B vectors and the broadcast
    (32 registers: 1 -> 15, 2 -> 10, 3 -> 7, 4 -> 6, 5 -> 5, 6 -> 4)."""
    return max(1, (registers - 1) // (rows + 1))


def rows_for(vectors: int, registers: int) -> int:
    """Rows of a broadcast-A block of ``vectors`` vectors per row (at most 14:
    32 registers: 4 -> 6, 3 -> 9, 2 -> 14, 1 -> 14)."""
    return max(1, min(14, (registers - 1 - vectors) // vectors))


class Spec:
    """Lanes and registers of the micro-kernels, and the version of this file,
    as a value whose Numba *type* carries them: a kernel taking a ``Spec``
    argument is compiled (and cached on disk) once per spec, and an edit of
    this file's IR generator changes the version, so no stale entry loads."""

    __slots__ = ("lanes", "registers", "version", "numba_type")

    def __init__(self, lanes: int, registers: int):
        self.lanes, self.registers, self.version = int(lanes), int(registers), SOURCE_KEY
        self.numba_type = None  # its SpecType, made once (typed at every kernel call)

    def __repr__(self):
        return f"Spec(lanes={self.lanes}, registers={self.registers})"


SOURCE_KEY = zlib.crc32(Path(__file__).read_bytes())


class SpecType(types.Type):
    def __init__(self, lanes, registers, version):
        self.lanes, self.registers, self.version = lanes, registers, version
        super().__init__(name=f"SimdSpec({lanes}, {registers}, {version})")


@typeof_impl.register(Spec)
def _typeof_spec(val, c):
    if val.numba_type is None:
        val.numba_type = SpecType(val.lanes, val.registers, val.version)
    return val.numba_type


register_model(SpecType)(models.OpaqueModel)


@unbox(SpecType)
def _unbox_spec(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


def spec_for(dtype) -> Spec:
    """The :class:`Spec` for ``dtype`` on this host (or as ``config`` says)."""
    return _spec(np.dtype(dtype), config.simd_lanes, config.simd_block)


@functools.lru_cache(maxsize=64)
def _spec(dtype, lanes, block) -> Spec:
    # kept per dtype and setting (spec_for is asked several times a call)
    _, registers = host_simd()
    if config.simd_block:
        rows, vectors = block_for(dtype)
        registers = rows * vectors + vectors + 1
    return Spec(lanes_for(dtype), registers)


_LLVM_TYPES = {"float32": ir.FloatType(), "float64": ir.DoubleType()}
# integer inputs the direct path's tiles convert while they copy (exact in float32)
INTEGER_SOURCES = ("uint8", "int8", "uint16", "int16")
_FMA_NAMES = {"float32": "f32", "float64": "f64"}


def _incoming(phis, *sources):
    """Add to each phi its value from each ``(values, block)`` source."""
    for values, block in sources:
        for phi, value in zip(phis, values):
            phi.add_incoming(value, block)


def _splat(builder, vt, value):
    """``value`` in every lane of a ``vt`` vector (insertelement + shuffle)."""
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vt.count), [0] * vt.count)
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), zeros)


def _masked(builder, vt, name):
    """``llvm.masked.load`` and ``llvm.masked.store`` for ``vt`` vectors
    (``name``: f32 or f64), declared in the builder's module."""
    mask_t = ir.VectorType(ir.IntType(1), vt.count)
    suffix = f"v{vt.count}{name}.p0"
    load = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vt, [vt.as_pointer(), ir.IntType(32), mask_t, vt]),
        f"llvm.masked.load.{suffix}",
    )
    store = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), ir.IntType(32), mask_t]),
        f"llvm.masked.store.{suffix}",
    )
    return load, store


def _guarded(builder, full, plain, masked):
    """``plain()`` where the i1 ``full`` holds (every lane of every vector
    involved is live), else ``masked()``: each emits the same stores (or
    scatters), without and with their masks. A masked store costs 8-12
    cycles on AMD Zen 3 (AVX2 ``vmaskmovps``: microcoded) where a plain one
    costs one; the band blocks' and transposes' masks are all-ones but at a
    plane's edge, so the branch is predicted."""
    with builder.if_else(full, likely=True) as (then, otherwise):
        with then:
            plain()
        with otherwise:
            masked()


def _store_first(builder, store, value, ptr, rest, align):
    """The first ``rest`` lanes (i64, ``0 < rest <= lanes``) of ``value`` at
    ``ptr``: one ``llvm.masked.store`` for 512-bit vectors (AVX-512's mask
    registers), else as halves, quarters, ... of the vector under the bits
    of ``rest`` (AVX2's ``vmaskmovps`` store is microcoded on AMD Zen 3:
    8-12 cycles, against 1-3 for the pieces)."""
    vt = value.type
    lanes, et = vt.count, vt.element
    if lanes * (32 if isinstance(et, ir.FloatType) else 64) >= 512:
        builder.call(store, [value, ptr, align, _lane_mask(builder, lanes, 0, rest)])
        return
    i64, i32 = ir.IntType(64), ir.IntType(32)
    base = builder.bitcast(ptr, et.as_pointer())
    off, v = ir.Constant(i64, 0), value
    size = lanes  # rest == lanes: the whole vector (mode 4's last vector may be whole)
    while size >= 1:
        bit = builder.icmp_unsigned("!=", builder.and_(rest, ir.Constant(i64, size)), ir.Constant(i64, 0))
        with builder.if_then(bit):
            at = builder.gep(base, [off])
            if size == 1:
                builder.store(builder.extract_element(v, ir.Constant(i32, 0)), at, align=align.constant)
            else:
                part = builder.shuffle_vector(
                    v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(i32, size), list(range(size)))
                )
                builder.store(
                    part, builder.bitcast(at, ir.VectorType(et, size).as_pointer()), align=align.constant
                )
        if 1 < size < lanes:
            moved = [min(size + j, lanes - 1) for j in range(lanes)]
            shifted = builder.shuffle_vector(
                v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(i32, lanes), moved)
            )
            v = builder.select(bit, shifted, v)
            off = builder.add(off, builder.select(bit, ir.Constant(i64, size), ir.Constant(i64, 0)))
        size //= 2


def _no_unroll(branch):
    """Mark the loop whose latch is ``branch`` not to be unrolled
    (``llvm.loop.unroll.disable``; the loop ID a self-referential node of
    its own). LLVM unrolled the band block's middle loop by two with a
    remainder and kept its 24 accumulators on the stack (loaded and stored
    every iteration)."""
    module = branch.parent.parent.module
    option = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop = ir.values.MDValue(module, [], name=str(len(module.metadata)))
    loop.operands = (loop, option)
    branch.set_metadata("llvm.loop", loop)


def _lane_mask(builder, lanes, first, count):
    """Lanes ``first + l < count`` (i64 ``count``; ``first`` a Python int)."""
    i64 = ir.IntType(64)
    step = ir.Constant(ir.VectorType(i64, lanes), [first + lane for lane in range(lanes)])
    return builder.icmp_signed("<", step, _splat(builder, ir.VectorType(i64, lanes), count))


class _Block:
    """The IR of one register block (see :func:`fma_block`): C loaded into
    accumulators, the k loop of FMAs (accumulators as phis), C stored."""

    def __init__(self, spec, context, builder, signature, args):
        self.dtype, self.rows, self.vectors, self.lanes, self.a_bcast, self.b_bcast = spec
        self.builder = builder
        self.align = np.dtype(self.dtype).itemsize
        self.vt = ir.VectorType(_LLVM_TYPES[self.dtype], self.lanes)
        self.i64 = ir.IntType(64)
        fn_type = ir.FunctionType(self.vt, [self.vt, self.vt, self.vt])
        name = f"llvm.fma.v{self.lanes}{_FMA_NAMES[self.dtype]}"
        self.fma = cgutils.get_or_insert_function(builder.module, fn_type, name)
        arrays = [context.make_array(signature.args[i])(context, builder, args[i]).data for i in range(3)]
        self.pa, self.pb, self.pc = arrays
        self.k, self.a0, self.ak, self.ar, self.b0, self.bk, self.c0, self.ldc = args[3:]

    def const(self, v):
        return ir.Constant(self.i64, v)

    def c_ptr(self, r, v):
        b = self.builder
        off = b.add(self.c0, b.add(b.mul(self.const(r), self.ldc), self.const(v * self.lanes)))
        return b.bitcast(b.gep(self.pc, [off]), self.vt.as_pointer())

    row_offsets = None  # A's rows at offsets from a table (see _TapBlock), else r*ar apart

    def operand(self, ptr, base, sk, sr, step, r, v, bcast):
        """A vector at ``base + step*sk + r*sr + v*lanes``, or the scalar at
        ``base + step*sk + r*sr`` splatted (A's rows: ``row_offsets[r]``
        for ``r*sr`` where those are given)."""
        b = self.builder
        row = self.row_offsets[r] if sr is self.ar and self.row_offsets else b.mul(self.const(r), sr)
        off = b.add(base, b.add(b.mul(step, sk), row))
        if bcast:
            return _splat(b, self.vt, b.load(b.gep(ptr, [off]), align=self.align))
        off = b.add(off, self.const(v * self.lanes))
        return b.load(b.bitcast(b.gep(ptr, [off]), self.vt.as_pointer()), align=self.align)

    def step(self, step, acc, a0=None, b0=None):
        """One k step: B once (no row term), then an FMA per accumulator."""
        nv = self.vectors
        a0 = self.a0 if a0 is None else a0
        b0 = self.b0 if b0 is None else b0
        bvec = [
            self.operand(self.pb, b0, self.bk, self.const(0), step, 0, v, self.b_bcast) for v in range(nv)
        ]
        new = []
        for r in range(self.rows):
            a_row = self.operand(self.pa, a0, self.ak, self.ar, step, r, 0, True) if self.a_bcast else None
            for v in range(nv):
                av = a_row if self.a_bcast else self.operand(self.pa, a0, self.ak, self.ar, step, r, v, False)
                new.append(self.builder.call(self.fma, [av, bvec[v], acc[r * nv + v]]))
        return new

    def initial(self, cells, accumulate=True):
        """The accumulators' start: C loaded, or zeros where C is overwritten
        (no load, no zeroing pass by the caller)."""
        if accumulate:
            return [self.builder.load(self.c_ptr(r, v), align=self.align) for r, v in cells]
        return [ir.Constant(self.vt, [0.0] * self.lanes) for _ in cells]

    def store_final(self, cells, *sources):
        """At the exit block: one phi per accumulator over ``sources``
        (``(values, block)`` pairs; every phi first), then C stored."""
        final = [self.builder.phi(self.vt) for _ in cells]
        _incoming(final, *sources)
        for phi, (r, v) in zip(final, cells):
            self.builder.store(phi, self.c_ptr(r, v), align=self.align)

    def emit(self):
        b, nv = self.builder, self.vectors
        cells = [(r, v) for r in range(self.rows) for v in range(nv)]
        init = self.initial(cells)
        entry = b.block
        loop = b.append_basic_block("ukernel.loop")
        done = b.append_basic_block("ukernel.done")
        b.cbranch(b.icmp_signed(">", self.k, self.const(0)), loop, done)
        b.position_at_end(loop)
        step = b.phi(self.i64)
        step.add_incoming(self.const(0), entry)
        acc = [b.phi(self.vt) for _ in cells]
        _incoming(acc, (init, entry))
        new = self.step(step, acc)
        nxt = b.add(step, self.const(1))
        end = b.block
        step.add_incoming(nxt, end)
        _incoming(acc, (new, end))
        _no_unroll(b.cbranch(b.icmp_signed("<", nxt, self.k), loop, done))
        b.position_at_end(done)
        self.store_final(cells, (init, entry), (new, end))


class _TapBlock(_Block):
    """The IR of :func:`fma_taps`: two nested loops (k and taps, in the order
    of ``table``), the accumulators live across both."""

    A_BCAST = True  # A broadcast (fma_taps) or loaded as vectors (fma_taps_vv)

    @staticmethod
    def _literals(signature):
        """The spec and the rows, vectors, table and accumulate literals."""
        return (signature.args[-5],) + tuple(t.literal_value for t in signature.args[-4:])

    def __init__(self, dtype, context, builder, signature, args):
        spec, self.rows_, vectors, self.table, self.accumulate = self._literals(signature)
        vectors = vectors or vectors_for(self.rows_, spec.registers)
        self.rows_ = self.rows_ or rows_for(vectors, spec.registers)
        block = (dtype, self.rows_, vectors, spec.lanes, self.A_BCAST, False)
        k_args = [args[8], args[6], args[9], args[10], args[7], args[11], args[12], args[13]]
        super().__init__(block, context, builder, signature, list(args[:3]) + k_args)
        self.tab = context.make_array(signature.args[3])(context, builder, args[3]).data
        self.nt, self.at = args[4], args[5]
        if isinstance(signature.args[10], types.Array):  # ar: A's row offsets, read once
            rows = context.make_array(signature.args[10])(context, builder, args[10]).data
            self.row_offsets = [
                builder.load(builder.gep(rows, [self.const(r)]), align=8) for r in range(self.rows)
            ]

    def emit(self):
        # table 0 (B): for i < k: for t < nt: A a0 + t*at + i*ak, B b0 + tab[t] + i*bk
        # table 1 (A): for t < nt: for i < k: A a0 + tab[t] + i*ak, B b0 + t*at + i*bk
        b, nv = self.builder, self.vectors
        cells = [(r, v) for r in range(self.rows) for v in range(nv)]
        init = self.initial(cells, self.accumulate)
        entry = b.block
        outer = b.append_basic_block("ukernel.outer")
        inner = b.append_basic_block("ukernel.inner")
        latch = b.append_basic_block("ukernel.next")
        done = b.append_basic_block("ukernel.done")
        zero = self.const(0)
        n_outer, n_inner = (self.k, self.nt) if self.table == 0 else (self.nt, self.k)
        go = b.and_(b.icmp_signed(">", self.nt, zero), b.icmp_signed(">", self.k, zero))
        b.cbranch(go, outer, done)
        b.position_at_end(outer)
        u = b.phi(self.i64)
        acc_u = [b.phi(self.vt) for _ in cells]
        if self.table == 0:
            oa, ob = b.add(self.a0, b.mul(u, self.ak)), b.add(self.b0, b.mul(u, self.bk))
        else:
            oa, ob = b.add(self.a0, b.load(b.gep(self.tab, [u]), align=8)), b.add(self.b0, b.mul(u, self.at))
        b.branch(inner)
        b.position_at_end(inner)
        v = b.phi(self.i64)
        acc = [b.phi(self.vt) for _ in cells]
        if self.table == 0:
            a_v, b_v = b.add(oa, b.mul(v, self.at)), b.add(ob, b.load(b.gep(self.tab, [v]), align=8))
            new = self.step(zero, acc, a_v, b_v)
        else:
            new = self.step(v, acc, oa, ob)
        nxt = b.add(v, self.const(1))
        end = b.block
        v.add_incoming(zero, outer)
        v.add_incoming(nxt, end)
        _incoming(acc, (acc_u, outer), (new, end))
        _no_unroll(b.cbranch(b.icmp_signed("<", nxt, n_inner), inner, latch))
        b.position_at_end(latch)
        u_next = b.add(u, self.const(1))
        u.add_incoming(zero, entry)
        u.add_incoming(u_next, latch)
        _incoming(acc_u, (init, entry), (new, latch))
        _no_unroll(b.cbranch(b.icmp_signed("<", u_next, n_outer), outer, done))
        b.position_at_end(done)
        self.store_final(cells, (init, entry), (new, latch))


def _block_codegen(block, a, b, c, spec, literals):
    """The codegen of an intrinsic emitting ``block``'s IR, or None when the
    arguments do not type (not a Spec, a non-literal shape, mixed or
    unsupported dtypes)."""
    if not isinstance(spec, SpecType):
        return None
    if not all(isinstance(t, types.IntegerLiteral) for t in literals):
        return None
    dtype = a.dtype.name
    int_target = (
        c.dtype.name in INTEGER_TARGETS and getattr(block, "INTEGER_MODE", None) == literals[-1].literal_value
    )
    if dtype not in _LLVM_TYPES or b.dtype != a.dtype or (c.dtype != a.dtype and not int_target):
        return None

    def codegen(context, builder, signature, args):
        block(dtype, context, builder, signature, args).emit()
        return context.get_dummy_value()

    return codegen


# integer outputs fma_band's mode 3 stores (through int32: no wider ones)
INTEGER_TARGETS = ("uint8", "int8", "uint16", "int16", "int32", "uint32")


@intrinsic
def fma_taps(
    typingctx, a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, rows, vectors, table, accumulate
):
    """Broadcast-A x vector-B register block over k and taps, for njit code::

        C[c0 + r*ldc + v*lanes + l] (+)= sum_{i<k} sum_{t<nt}
            A[a0 + ta(t) + i*ak + r*ar] * B[b0 + tb(t) + i*bk + v*lanes + l]

    with the per-tap offsets from the int64 array ``tab`` on one side and
    linear (``t*at``) on the other: ``table=0``: ``tb(t) = tab[t]``,
    ``ta(t) = t*at``, taps the inner loop (lanes over output pixels: the
    taps of one input channel read neighbouring data); ``table=1``:
    ``ta(t) = tab[t]``, ``tb(t) = t*at``, k the inner loop (lanes over output
    channels, A a channels-last input: a tap's channels are contiguous).
    Indirect taps: a convolution's kernel taps at any stride and dilation.
    ``ar`` may be an int64 array instead: row ``r`` of A at ``ar[r]`` in
    place of ``r*ar`` (gathered rows: output pixels anywhere in a tile, no
    junk columns between the rows of a plane).

    ``spec`` is a :class:`Spec` (lanes and registers, in its type, so a caller
    compiled with ``cache=True`` has one on-disk entry per spec); ``rows``,
    ``vectors``, ``table`` and ``accumulate`` (1: add into C; 0: overwrite it)
    are integer literals written in the code
    (``vectors=0``: :func:`vectors_for` ``(rows, registers)``; ``rows=0``:
    :func:`rows_for` ``(vectors, registers)``).
    """
    codegen = _block_codegen(_TapBlock, a, b, c, spec, (rows, vectors, table, accumulate))
    if codegen is None:
        return None
    sig = types.void(
        a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, rows, vectors, table, accumulate
    )
    return sig, codegen


class _VectorTapBlock(_TapBlock):
    """The IR of :func:`fma_taps_vv`."""

    A_BCAST = False


# fmt: off
@intrinsic
def fma_taps_vv(
    typingctx, a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, rows, vectors, table, accumulate
):
    # fmt: on
    """:func:`fma_taps` with A loaded as vectors too (no broadcast)::

        C[c0 + r*ldc + v*lanes + l] (+)= sum_{i<k} sum_{t<nt}
            A[a0 + ta(t) + i*ak + r*ar + v*lanes + l] * B[b0 + tb(t) + i*bk + v*lanes + l]

    Lanes over channels of a depthwise conv: A the input (a channels-last
    tile, row ``r`` an output pixel ``ar`` apart), B the weights (one vector
    per tap, shared by the rows). One load per FMA, none shared: the shape
    for narrow planes, where lanes over pixels leave most lanes idle.
    Arguments as for :func:`fma_taps` (``rows`` a non-zero literal)."""
    codegen = _block_codegen(_VectorTapBlock, a, b, c, spec, (rows, vectors, table, accumulate))
    if codegen is None or rows.literal_value < 1:
        return None
    sig = types.void(
        a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, spec, rows, vectors, table, accumulate
    )
    return sig, codegen


class _TapOutBlock(_TapBlock):
    """The IR of :func:`fma_taps_out`: :func:`fma_taps` (``table=0``) started
    from the bias and stored straight into the output, each vector of
    pixels split at a row's end."""

    @staticmethod
    def _literals(signature):
        return signature.args[-2], signature.args[-1].literal_value, 0, 0, 0

    def __init__(self, dtype, context, builder, signature, args):
        super().__init__(dtype, context, builder, signature, args)
        self.pbias = context.make_array(signature.args[14])(context, builder, args[14]).data
        self.bo, self.p0, self.wq, self.ow_n, self.ldh, self.pend, self.nrows = args[15:22]
        self.pacc = context.make_array(signature.args[22])(context, builder, args[22]).data
        self.acc0, self.lda = args[23], args[24]

    def initial(self, cells, accumulate=True):
        """Each row's bias (the last valid row's for the rows past ``nrows``:
        never read past the bias array), plus the block's earlier K chunks
        where ``lda > 0`` (on two branches, as :class:`_BandBlock`'s)."""
        b = self.builder
        starts = []
        for r in range(self.rows):
            last = b.sub(self.nrows, self.const(1))
            row = b.select(b.icmp_signed("<", self.const(r), self.nrows), self.const(r), last)
            value = b.load(b.gep(self.pbias, [b.add(self.bo, row)]), align=self.align)
            starts.append(_splat(b, self.vt, value))
        with b.if_else(b.icmp_signed(">", self.lda, self.const(0)), likely=False) as (then, otherwise):
            with then:
                added = []
                for r, v in cells:
                    off = b.add(self.acc0, b.add(b.mul(self.const(r), self.lda), self.const(v * self.lanes)))
                    ptr = b.bitcast(b.gep(self.pacc, [off]), self.vt.as_pointer())
                    added.append(b.fadd(b.load(ptr, align=self.align), starts[r]))
                from_acc = b.block
            with otherwise:
                from_bias = b.block
        out = [b.phi(self.vt) for _ in cells]
        for phi, value, (r, _) in zip(out, added, cells):
            phi.add_incoming(value, from_acc)
            phi.add_incoming(starts[r], from_bias)
        return out

    def _at(self, off, r):
        b = self.builder
        return b.bitcast(b.gep(self.pc, [b.add(off, b.mul(self.const(r), self.ldc))]), self.vt.as_pointer())

    def store_final(self, cells, *sources):
        """Vector ``v`` holds pixels ``p0 + v*lanes + l`` of the band's flat
        run (rows ``wq`` apart, ``ow_n`` of each a row of the output, ``ldh``
        apart; none from ``pend``): its lanes in the row where it starts,
        then those past that row's end in the next row (``wq >= lanes``: at
        most two rows). A vector wholly inside one row is one plain store a
        row of the block, else two masked ones."""
        b, nv, L = self.builder, self.vectors, self.lanes
        final = [b.phi(self.vt) for _ in cells]
        _incoming(final, *sources)
        _, store = _masked(b, self.vt, _FMA_NAMES[self.dtype])
        align = ir.Constant(ir.IntType(32), self.align)
        rows_full = b.icmp_signed(">=", self.nrows, self.const(self.rows))
        mask_t = ir.VectorType(ir.IntType(1), L)
        lane = ir.Constant(ir.VectorType(self.i64, L), list(range(L)))
        for v in range(nv):
            pv = b.add(self.p0, self.const(v * L))
            oh = b.udiv(pv, self.wq)
            ow = b.sub(pv, b.mul(oh, self.wq))
            here = b.add(self.c0, b.add(b.mul(oh, self.ldh), ow))
            left = b.sub(self.ow_n, ow)  # lanes up to this row's end
            left = b.select(b.icmp_signed("<", left, self.const(0)), self.const(0), left)
            left = b.select(b.icmp_signed(">", left, self.const(L)), self.const(L), left)
            cnt = b.select(b.icmp_signed("<", pv, self.pend), left, self.const(0))
            full = b.and_(rows_full, b.icmp_signed("==", cnt, self.const(L)))
            values = [final[r * nv + v] for r in range(self.rows)]

            def plain(values=values, here=here):
                for r, value in enumerate(values):
                    b.store(value, self._at(here, r), align=self.align)

            def masked(values=values, here=here, cnt=cnt, pv=pv, oh=oh, ow=ow):
                skip = b.sub(self.wq, ow)  # the lane where the next row starts
                nxt = b.sub(b.add(self.c0, b.mul(b.add(oh, self.const(1)), self.ldh)), skip)
                first = b.icmp_signed("<", lane, _splat(b, ir.VectorType(self.i64, L), cnt))
                second = b.and_(
                    b.icmp_signed(">=", lane, _splat(b, ir.VectorType(self.i64, L), skip)),
                    b.icmp_signed("<", lane, _splat(b, ir.VectorType(self.i64, L), b.add(skip, self.ow_n))),
                )
                on = b.icmp_signed("<", b.add(pv, skip), self.pend)
                second = b.and_(second, _splat(b, mask_t, on))
                for r, value in enumerate(values):
                    row = _splat(b, mask_t, b.icmp_signed("<", self.const(r), self.nrows))
                    b.call(store, [value, self._at(here, r), align, b.and_(first, row)])
                    b.call(store, [value, self._at(nxt, r), align, b.and_(second, row)])

            _guarded(b, full, plain, masked)


# fmt: off
@intrinsic
def fma_taps_out(
    typingctx, a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, bias, bo, p0, wq, ow_n, ldh, pend, nrows,
    acc, acc0, lda, spec, rows,
):
    # fmt: on
    """:func:`fma_taps` (``table=0``: lanes over output pixels, the weight
    broadcast) from the bias, stored straight into an output with unit
    stride along its rows::

        pixel p = p0 + v*lanes + l of the block, h = p // wq, w = p % wq:
        C[c0 + r*ldc + h*ldh + w] = bias[bo + r] + sum_{i<k} sum_{t<nt}
            A[a0 + t*at + i*ak + r*ar] * B[b0 + tab[t] + i*bk + v*lanes + l]

    plus ``acc[acc0 + r*lda + v*lanes + l]`` where ``lda > 0`` (the block's
    earlier K chunks, summed by :func:`fma_taps`),
    for rows ``r < nrows``, columns ``w < ow_n`` and pixels ``p < pend``;
    the block's other cells (the junk columns of a tile's rows, the rows
    past the output channels) are computed and not stored. Needs ``wq >=
    lanes``. The stores come between the blocks' FMAs instead of in a copy
    after them (the copy of a 3x3 stem's blocks took 43% of its time).
    ``spec`` and ``rows`` (a non-zero literal) as in :func:`fma_taps`."""
    literals = (rows, types.IntegerLiteral(0), types.IntegerLiteral(0), types.IntegerLiteral(0))
    codegen = _block_codegen(_TapOutBlock, a, b, c, spec, literals)
    if codegen is None or rows.literal_value < 1 or bias.dtype != c.dtype or acc.dtype != c.dtype:
        return None
    i64 = types.int64
    args = (a, b, c, tab, nt, at, a0, b0, k, ak, ar, bk, c0, ldc, bias) + (i64,) * 7 + (acc, i64, i64, spec)
    sig = types.void(*args, rows)
    return sig, codegen


class _BandBlock(_Block):
    """The IR of :func:`fma_band`. Input row ``s`` of the block feeds output
    rows ``max(0, s-kh+1) .. min(rows-1, s)``; with ``kh >= rows - 1`` the
    rows come in three runs known when the code is generated: a prologue
    (``s < rows-1``: rows ``0..s``), a loop over the middle rows (all rows)
    and an epilogue (``s = kh-1+e``: rows ``e..rows-1``), inside a loop over
    the taps. Each input row's vectors are loaded once and feed only its
    rows' FMAs: no FMA on a zero weight, and no data-dependent branch for the
    predictor to miss (a switch per input row measured 1.5-2x slower)."""

    def __init__(self, dtype, context, builder, signature, args):
        spec = signature.args[-4]
        self.rows_, vectors, self.accumulate = (t.literal_value for t in signature.args[-3:])
        vectors = vectors or vectors_for(self.rows_, spec.registers)
        block = (dtype, self.rows_, vectors, spec.lanes, True, False)
        # _Block's (k, a0, ak, ar, b0, bk, c0, ldc): ar is unused here
        k_args = [args[8], args[6], args[9], args[9], args[7], args[10], args[12], args[13]]
        super().__init__(block, context, builder, signature, list(args[:3]) + k_args)
        self.tab = context.make_array(signature.args[3])(context, builder, args[3]).data
        self.c_type = np.dtype(signature.args[2].dtype.name)
        self.nt, self.kh, self.rp = args[4], args[5], args[11]
        self.cnt, self.nrows, self.bias, self.add = args[14], args[15], args[16], args[17]

    def _mask(self, r, v):
        """Block cell (r, v) in the target: lanes below cnt, rows below nrows."""
        b = self.builder
        lanes = _lane_mask(b, self.lanes, v * self.lanes, self.cnt)
        row = b.icmp_signed("<", self.const(r), self.nrows)
        return b.and_(lanes, _splat(b, ir.VectorType(ir.IntType(1), self.lanes), row))

    INTEGER_MODE = 3  # the accumulate literal whose C may be an integer array

    def initial(self, cells, accumulate=True):
        """Mode 2 (C is the target): C's cells in the target (masked loads)
        where ``add``, else the bias, on two branches (a select of the two
        waits for the loads, which miss the cache in a fresh output: a 7x7
        depthwise layer ran 1.4x slower); mode 3: the bias."""
        if self.accumulate == 3:
            return [_splat(self.builder, self.vt, self.bias) for _ in cells]
        if self.accumulate < 2:
            return super().initial(cells, self.accumulate == 1)
        b = self.builder
        load, _ = _masked(b, self.vt, _FMA_NAMES[self.dtype])
        align = ir.Constant(ir.IntType(32), self.align)
        none = ir.Constant(self.vt, [0.0] * self.lanes)
        add = b.icmp_signed("!=", self.add, self.const(0))
        with b.if_else(add, likely=False) as (then, otherwise):
            with then:
                loaded = [b.call(load, [self.c_ptr(r, v), align, self._mask(r, v), none]) for r, v in cells]
                from_load = b.block
            with otherwise:
                start = _splat(b, self.vt, self.bias)
                from_bias = b.block
        out = [b.phi(self.vt) for _ in cells]
        for phi, value in zip(out, loaded):
            phi.add_incoming(value, from_load)
        for phi in out:
            phi.add_incoming(start, from_bias)
        return out

    def store_final(self, cells, *sources):
        """Mode 2: masked stores of the cells in the target; mode 3: each
        cell truncated toward zero through int32 (``fptosi``: the caller
        knows every value lies inside int32's range), wrapped to C's integer
        type and stored whole."""
        if self.accumulate == 3:
            return self._store_integers(cells, sources)
        if self.accumulate < 2:
            return super().store_final(cells, *sources)
        b = self.builder
        final = [b.phi(self.vt) for _ in cells]
        _incoming(final, *sources)
        _, store = _masked(b, self.vt, _FMA_NAMES[self.dtype])
        align = ir.Constant(ir.IntType(32), self.align)

        def plain():
            for phi, (r, v) in zip(final, cells):
                b.store(phi, self.c_ptr(r, v), align=self.align)

        def masked():
            for phi, (r, v) in zip(final, cells):
                b.call(store, [phi, self.c_ptr(r, v), align, self._mask(r, v)])

        _guarded(b, self._full(), plain, masked)

    def _store_integers(self, cells, sources):
        b = self.builder
        final = [b.phi(self.vt) for _ in cells]
        _incoming(final, *sources)
        ct = self.c_type
        i32 = ir.VectorType(ir.IntType(32), self.lanes)
        out_t = ir.VectorType(ir.IntType(8 * ct.itemsize), self.lanes)
        for phi, (r, v) in zip(final, cells):
            value = b.fptosi(phi, i32)
            if ct.itemsize < 4:
                value = b.trunc(value, out_t)
            off = b.add(self.c0, b.add(b.mul(self.const(r), self.ldc), self.const(v * self.lanes)))
            b.store(value, b.bitcast(b.gep(self.pc, [off]), out_t.as_pointer()), align=ct.itemsize)

    def _full(self):
        """Every cell of the block in the target (no lane masked off)."""
        b = self.builder
        rows = b.icmp_signed(">=", self.nrows, self.const(self.rows))
        return b.and_(rows, b.icmp_signed(">=", self.cnt, self.const(self.vectors * self.lanes)))

    def _header(self, name, pred, values):
        """A new block holding a counter phi (0 from ``pred``) and one phi
        per value (``values`` from ``pred``); the builder left at its end."""
        b = self.builder
        block = b.append_basic_block(name)
        b.position_at_end(block)
        i = b.phi(self.i64)
        i.add_incoming(self.const(0), pred)
        phis = [b.phi(self.vt) for _ in values]
        _incoming(phis, (values, pred))
        return block, i, phis

    def _row(self, lo, hi, s, ch, t, acc):
        """Input row ``s`` (i64) at tap ``t``: its vectors loaded once, an FMA
        into each of output rows lo..hi; returns every accumulator after."""
        b, nv = self.builder, self.vectors
        zero = self.const(0)
        bb = b.add(b.add(self.b0, b.mul(ch, self.bk)), b.mul(s, self.rp))
        bb = b.add(bb, b.load(b.gep(self.tab, [t]), align=8))
        bvec = [self.operand(self.pb, bb, zero, zero, zero, 0, v, False) for v in range(nv)]
        aa = b.add(b.add(self.a0, b.mul(ch, self.ak)), t)
        out = list(acc)
        for r in range(lo, hi + 1):
            wa = b.add(aa, b.mul(b.sub(s, self.const(r)), self.nt))
            w = self.operand(self.pa, wa, zero, zero, zero, 0, 0, True)
            for v in range(nv):
                out[r * nv + v] = b.call(self.fma, [w, bvec[v], acc[r * nv + v]])
        return out

    def _middle(self, ch, t, acc):
        """The loop over input rows ``rows-1 .. kh-1`` (every output row)."""
        b, R = self.builder, self.rows
        pred = b.block
        first = self.const(R - 1)
        head, i, part = self._header("band.middle", pred, acc)
        skip = b.append_basic_block("band.rest")
        b.position_at_end(pred)
        b.cbranch(b.icmp_signed(">", self.kh, first), head, skip)
        b.position_at_end(head)
        new = self._row(0, R - 1, b.add(first, i), ch, t, part)
        nxt = b.add(i, self.const(1))
        i.add_incoming(nxt, head)
        _incoming(part, (new, head))
        _no_unroll(b.cbranch(b.icmp_signed("<", b.add(first, nxt), self.kh), head, skip))
        b.position_at_end(skip)
        out = [b.phi(self.vt) for _ in acc]
        _incoming(out, (acc, pred), (new, head))
        return out

    def emit(self):
        b, nv, R = self.builder, self.vectors, self.rows
        cells = [(r, v) for r in range(R) for v in range(nv)]
        init = self.initial(cells, self.accumulate)
        entry = b.block
        zero, one = self.const(0), self.const(1)
        go = b.and_(b.icmp_signed(">", self.nt, zero), b.icmp_signed(">", self.k, zero))
        done = b.append_basic_block("band.done")
        chans, ch, acc_c = self._header("band.k", entry, init)
        b.position_at_end(entry)
        b.cbranch(go, chans, done)
        taps, t, acc_t = self._header("band.taps", chans, acc_c)
        b.position_at_end(chans)
        b.branch(taps)
        b.position_at_end(taps)
        acc = acc_t
        for s in range(R - 1):  # prologue: rows 0..s
            acc = self._row(0, s, self.const(s), ch, t, acc)
        acc = self._middle(ch, t, acc)
        last = b.sub(self.kh, one)
        for e in range(1, R):  # epilogue: rows e..R-1
            acc = self._row(e, R - 1, b.add(last, self.const(e)), ch, t, acc)
        t_end = b.block
        t_next = b.add(t, one)
        t.add_incoming(t_next, t_end)
        _incoming(acc_t, (acc, t_end))
        latch = b.append_basic_block("band.knext")
        _no_unroll(b.cbranch(b.icmp_signed("<", t_next, self.nt), taps, latch))
        b.position_at_end(latch)
        ch_next = b.add(ch, one)
        ch.add_incoming(ch_next, latch)
        _incoming(acc_c, (acc, latch))
        _no_unroll(b.cbranch(b.icmp_signed("<", ch_next, self.k), chans, done))
        b.position_at_end(done)
        self.store_final(cells, (init, entry), (acc, latch))


# fmt: off
@intrinsic
def fma_band(
    typingctx, a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, cnt, nrows, bias, add, spec, rows, vectors,
    accumulate,
):
    # fmt: on
    """A block of ``rows`` output rows x ``vectors`` vectors of pixels of one
    output channel, for njit code (lanes over the pixels of a row; the rows
    share each loaded input row)::

        C[c0 + r*ldc + v*lanes + l] (+)= sum_{i<k} sum_{h<kh} sum_{t<nt}
            A[a0 + i*ak + h*nt + t] * B[b0 + i*bk + (r+h)*rp + tab[t] + v*lanes + l]

    ``h``: the kernel rows (output row ``r`` reads input row ``r + h``, ``rp``
    elements apart; ``kh >= rows - 1``: a shorter kernel is given zero rows),
    ``tab``: the other taps' offsets (int64). Each input row
    is loaded once per tap and feeds every output row it reaches, so a kernel
    of ``kh`` rows does ``kh`` FMAs per load where a one-row block does one.
    ``spec``, ``rows`` and ``vectors`` (0: :func:`vectors_for`) as in
    :func:`fma_taps`; ``accumulate`` 0 or 1 as there (``cnt``, ``nrows``,
    ``bias``, ``add`` unused), or 2: C is the target, an output with unit
    stride along the rows: only rows below ``nrows`` and columns below
    ``cnt`` of the block are read and written (masked vectors), starting from
    ``bias`` or (``add`` nonzero: a later chunk of channels) adding into C.
    No scratch block, no copy. ``accumulate`` 3: C may be an integer array
    (:data:`INTEGER_TARGETS`): the block, from ``bias``, is stored whole,
    each value truncated toward zero through int32 and wrapped to C's type
    (the caller guarantees int32's range: out of it LLVM's conversion has
    no defined result).
    """
    codegen = _block_codegen(_BandBlock, a, b, c, spec, (rows, vectors, accumulate))
    if codegen is None or not all(isinstance(t, (types.Integer, types.Boolean)) for t in (cnt, nrows, add)):
        return None
    i64 = types.int64
    args = (a, b, c, tab, nt, kh, a0, b0, k, ak, bk, rp, c0, ldc, i64, i64, a.dtype, i64, spec, rows, vectors)
    return types.void(*args, accumulate), codegen


class _Run:
    """The IR of :func:`vector_run`: whole vectors, then one masked vector."""

    def __init__(self, dtype, context, builder, signature, args):
        self.builder = builder
        self.lanes = signature.args[-1].lanes
        self.mode = signature.args[-2].literal_value
        self.align = np.dtype(dtype).itemsize
        self.et = _LLVM_TYPES[dtype]
        self.name = _FMA_NAMES[dtype]
        self.vt = ir.VectorType(self.et, self.lanes)
        self.i64 = ir.IntType(64)
        self.pd = context.make_array(signature.args[0])(context, builder, args[0]).data
        self.ps = context.make_array(signature.args[2])(context, builder, args[2]).data
        self.d0, self.s0, self.n, self.bias = args[1], args[3], args[4], args[5]
        src = np.dtype(signature.args[2].dtype.name)
        # an integer source (modes 0 and 4): loaded as integer vectors, converted
        self.src_int = src.kind in "iu"
        self.signed = src.kind == "i"
        self.st = ir.VectorType(ir.IntType(8 * src.itemsize), self.lanes) if self.src_int else self.vt
        self.src_align = src.itemsize

    def _ptr(self, base, off, i, vt=None):
        b = self.builder
        return b.bitcast(b.gep(base, [b.add(off, i)]), (vt or self.vt).as_pointer())

    def _src_vector(self, at, mask=None):
        """The source vector at ``src[s0 + at:]`` in its own type (masked: the
        lanes of ``mask``, zeros elsewhere)."""
        b = self.builder
        ptr = self._ptr(self.ps, self.s0, at, self.st)
        if mask is None:
            return b.load(ptr, align=self.src_align)
        load, _ = _masked(b, self.st, f"i{self.st.element.width}" if self.src_int else self.name)
        none = ir.Constant(self.st, [0] * self.lanes if self.src_int else [0.0] * self.lanes)
        return b.call(load, [ptr, ir.Constant(ir.IntType(32), self.src_align), mask, none])

    def _convert(self, v):
        """A source vector as the destination's floats (integers converted)."""
        if not self.src_int:
            return v
        b = self.builder
        return b.sitofp(v, self.vt) if self.signed else b.uitofp(v, self.vt)

    def _pair(self, i, masks=(None, None)):
        """``src[s0 + 2*i + 2*l]`` for the lanes ``l``: two source vectors
        (masked: ``masks``, zeros elsewhere), their even lanes."""
        b, L = self.builder, self.lanes
        two = b.mul(i, ir.Constant(self.i64, 2))
        halves = [self._src_vector(b.add(two, ir.Constant(self.i64, h * L)), masks[h]) for h in range(2)]
        even = ir.Constant(ir.VectorType(ir.IntType(32), L), [2 * lane for lane in range(L)])
        return self._convert(b.shuffle_vector(halves[0], halves[1], even))

    def _value(self, src, dst):
        """The vector stored: src, src + bias or dst + src (by mode)."""
        b = self.builder
        if self.mode == 1:
            return b.fadd(src, _splat(b, self.vt, self.bias))
        if self.mode == 2:
            return b.fadd(dst(), src)
        return src

    def _source(self, i, rest=None):
        """The values stored at ``dst[d0 + i:]`` before the mode's bias or
        add: the next vector of the run (mode 4: of every other value); for
        the last, masked vector ``rest`` is the count of values it holds."""
        b, L = self.builder, self.lanes
        if self.mode == 4:
            if rest is None:
                return self._pair(i)
            reach = b.sub(b.mul(rest, ir.Constant(self.i64, 2)), ir.Constant(self.i64, 1))
            return self._pair(i, (_lane_mask(b, L, 0, reach), _lane_mask(b, L, L, reach)))
        return self._convert(self._src_vector(i, None if rest is None else _lane_mask(b, L, 0, rest)))

    def _spread(self, i, rest):
        """Modes 5 and 6: the source vector at ``src[s0 + i:]`` (plus the
        bias) into the even lanes of ``dst[d0 + 2 i:]``, two vectors, masked
        stores (``rest``: values left, None for a whole vector). The odd
        lanes are neither read nor written: another thread may be writing
        them (the other phase of a transposed op)."""
        b, L = self.builder, self.lanes
        load, store = _masked(b, self.vt, self.name)
        align = ir.Constant(ir.IntType(32), self.align)
        mask = None if rest is None else _lane_mask(b, L, 0, rest)
        v = self._convert(self._src_vector(i, mask))
        if self.mode == 5:
            v = b.fadd(v, _splat(b, self.vt, self.bias))
        i32 = ir.IntType(32)
        undef = ir.Constant(self.vt, ir.Undefined)
        count = ir.Constant(self.i64, 2 * L) if rest is None else b.mul(rest, ir.Constant(self.i64, 2))
        for h in range(2):
            idx = ir.Constant(ir.VectorType(i32, L), [h * L // 2 + lane // 2 if lane % 2 == 0 else L for lane in range(L)])
            part = b.shuffle_vector(v, undef, idx)
            even = ir.Constant(ir.VectorType(ir.IntType(1), L), [lane % 2 == 0 for lane in range(L)])
            live = b.and_(even, _lane_mask(b, L, h * L, count))
            ptr = self._ptr(self.pd, self.d0, b.add(b.mul(i, ir.Constant(self.i64, 2)), ir.Constant(self.i64, h * L)))
            if self.mode == 6:
                part = b.fadd(part, b.call(load, [ptr, align, live, ir.Constant(self.vt, [0.0] * L)]))
            b.call(store, [part, ptr, align, live])

    def _spread_scalar(self):
        """Modes 5 and 6 one value at a time."""
        b = self.builder
        zero, one, two = (ir.Constant(self.i64, v) for v in (0, 1, 2))
        entry = b.block
        loop = b.append_basic_block("spread.loop")
        done = b.append_basic_block("spread.done")
        b.cbranch(b.icmp_signed(">", self.n, zero), loop, done)
        b.position_at_end(loop)
        i = b.phi(self.i64)
        i.add_incoming(zero, entry)
        v = b.load(b.gep(self.ps, [b.add(self.s0, i)]), align=self.align)
        dptr = b.gep(self.pd, [b.add(self.d0, b.mul(i, two))])
        v = b.fadd(v, self.bias if self.mode == 5 else b.load(dptr, align=self.align))
        b.store(v, dptr, align=self.align)
        nxt = b.add(i, one)
        i.add_incoming(nxt, loop)
        b.cbranch(b.icmp_signed("<", nxt, self.n), loop, done)
        b.position_at_end(done)

    def emit(self):
        b, L = self.builder, self.lanes
        load, store = _masked(b, self.vt, self.name)
        align = ir.Constant(ir.IntType(32), self.align)
        zero, one = ir.Constant(self.i64, 0), ir.Constant(self.i64, 1)
        spread = self.mode in (5, 6)
        if spread and L * self.align < 64:
            self._spread_scalar()  # no AVX-512: masked stores were microcoded (AMD Zen 3)
            return
        if self.mode == 4:  # whole vectors while they read no further than src[s0 + 2 * (n - 1)]
            last = b.and_(b.sub(self.n, one), ir.Constant(self.i64, -L))
            full = b.select(b.icmp_signed(">", self.n, zero), last, zero)
        else:
            full = b.and_(self.n, ir.Constant(self.i64, -L))  # lanes: a power of two
        entry = b.block
        loop = b.append_basic_block("run.loop")
        tail = b.append_basic_block("run.tail")
        masked = b.append_basic_block("run.masked")
        done = b.append_basic_block("run.done")
        b.cbranch(b.icmp_signed(">", full, zero), loop, tail)
        b.position_at_end(loop)
        i = b.phi(self.i64)
        i.add_incoming(zero, entry)
        if spread:
            self._spread(i, None)
        else:
            value = self._value(self._source(i), lambda: b.load(self._ptr(self.pd, self.d0, i), align=self.align))
            b.store(value, self._ptr(self.pd, self.d0, i), align=self.align)
        nxt = b.add(i, ir.Constant(self.i64, L))
        i.add_incoming(nxt, loop)
        b.cbranch(b.icmp_signed("<", nxt, full), loop, tail)
        b.position_at_end(tail)
        b.cbranch(b.icmp_signed("<", full, self.n), masked, done)
        b.position_at_end(masked)
        rest = b.sub(self.n, full)
        if spread:
            self._spread(full, rest)
            b.branch(done)
            b.position_at_end(done)
            return
        mask = _lane_mask(b, L, 0, rest)
        none = ir.Constant(self.vt, [0.0] * L)
        dptr = self._ptr(self.pd, self.d0, full)
        value = self._value(self._source(full, rest), lambda: b.call(load, [dptr, align, mask, none]))
        _store_first(b, store, value, dptr, rest, align)
        b.branch(done)
        b.position_at_end(done)


@intrinsic
def vector_run(typingctx, dst, d0, src, s0, n, bias, mode, spec):
    """For njit code, ``n`` consecutive values (unit strides)::

        dst[d0 + i] = src[s0 + i]            (mode 0)
        dst[d0 + i] = src[s0 + i] + bias     (mode 1)
        dst[d0 + i] += src[s0 + i]           (mode 2)
        dst[d0 + i] = src[s0 + 2 * i]        (mode 4: a stride-2 gather)
        dst[d0 + 2 * i] = src[s0 + i] + bias (mode 5: a stride-2 store)
        dst[d0 + 2 * i] += src[s0 + i]       (mode 6)

    for ``i < n``, as whole vectors of ``spec.lanes`` and one masked vector
    (``llvm.masked.load/store``: no scalar remainder loop; a compiled loop of
    short rows, 14-60 values, otherwise runs mostly in its scalar
    remainder). ``mode`` is an integer literal. In modes 0 and 4 ``src``
    may hold 8- or 16-bit integers (converted exactly to the float ``dst``)."""
    if not isinstance(spec, SpecType) or not isinstance(mode, types.IntegerLiteral):
        return None
    dtype = dst.dtype.name
    converts = mode.literal_value in (0, 4) and src.dtype.name in INTEGER_SOURCES
    if dtype not in _LLVM_TYPES or (src.dtype != dst.dtype and not converts):
        return None
    sig = types.void(dst, d0, src, s0, n, bias, mode, spec)

    def codegen(context, builder, signature, args):
        args = list(args)
        for i in (1, 3, 4):
            args[i] = context.cast(builder, args[i], signature.args[i], types.int64)
        args[5] = context.cast(builder, args[5], signature.args[5], dst.dtype)
        _Run(dtype, context, builder, signature, args).emit()
        return context.get_dummy_value()

    return sig, codegen


def _transposed(builder, rows, lanes):
    """``rows`` (``lanes`` vectors) transposed: log2(lanes) rounds of
    two-source shuffles, each swapping the off-diagonal blocks of size ``b``
    (lanes/2, ..., 1) of every pair of rows ``b`` apart."""
    rows = list(rows)
    b = lanes // 2
    i32 = ir.IntType(32)
    while b >= 1:
        vt = ir.VectorType(i32, lanes)
        low = ir.Constant(vt, [j if (j // b) % 2 == 0 else lanes + j - b for j in range(lanes)])
        high = ir.Constant(vt, [j + b if (j // b) % 2 == 0 else lanes + j for j in range(lanes)])
        for i in range(lanes):
            if (i // b) % 2 == 0:
                r0, r1 = rows[i], rows[i + b]
                rows[i] = builder.shuffle_vector(r0, r1, low)
                rows[i + b] = builder.shuffle_vector(r0, r1, high)
        b //= 2
    return rows


def _rows_in(b, ptrs, count, width, align, name):
    """Vectors at ``ptrs`` through masks (rows ``i < count``, lanes ``< width``,
    zeros elsewhere; nothing else read). Masked loads stay: only the masked
    store is microcoded on AMD Zen 3."""
    vt = ptrs[0].type.pointee
    lanes = vt.count
    i64 = ir.IntType(64)
    load, _ = _masked(b, vt, name)
    zero = ir.Constant(vt, [0] * lanes if isinstance(vt.element, ir.IntType) else [0.0] * lanes)
    mask_t = ir.VectorType(ir.IntType(1), lanes)
    lanes_in = _lane_mask(b, lanes, 0, width)
    out = []
    for i, ptr in enumerate(ptrs):
        live = _splat(b, mask_t, b.icmp_signed("<", ir.Constant(i64, i), count))
        out.append(b.call(load, [ptr, ir.Constant(ir.IntType(32), align), b.and_(lanes_in, live), zero]))
    return out


def _rows_out(b, values, ptrs, count, width, align, name):
    """``values`` at ``ptrs`` (rows ``j < count``, lanes ``< width``; nothing
    else written): plain stores when every row and lane is inside, else
    masked ones (:func:`_guarded`)."""
    vt = values[0].type
    lanes = vt.count
    i64 = ir.IntType(64)
    _, store = _masked(b, vt, name)
    mask_t = ir.VectorType(ir.IntType(1), lanes)

    def plain():
        for v, ptr in zip(values, ptrs):
            b.store(v, ptr, align=align)

    def masked():
        lanes_out = _lane_mask(b, lanes, 0, width)
        for j, (v, ptr) in enumerate(zip(values, ptrs)):
            live = _splat(b, mask_t, b.icmp_signed("<", ir.Constant(i64, j), count))
            b.call(store, [v, ptr, ir.Constant(ir.IntType(32), align), b.and_(lanes_out, live)])

    full = ir.Constant(i64, lanes)
    _guarded(b, b.and_(b.icmp_signed(">=", width, full), b.icmp_signed(">=", count, full)), plain, masked)


@intrinsic
def transpose_block(typingctx, dst, d0, ds, dn, dlanes, src, s0, ss, sn, slanes, bias, b0, mode, spec):
    """For njit code, a block of up to ``lanes x lanes`` values transposed::

        dst[d0 + j*ds + i] = src[s0 + i*ss + j]  (+ bias[b0 + j] in mode 1)

    for ``i < min(sn, dlanes)`` source rows and ``j < min(dn, slanes)``
    destination rows; destination lanes ``sn <= i < dlanes`` get 0 (mode 0)
    or the bias. Rows are vectors (masked loads and stores: nothing outside
    those ranges is read or written), transposed in registers
    (:func:`_transposed`). ``src`` may hold 8/16-bit integers (converted
    exactly). ``mode`` is an integer literal (0 or 1). The copies between a
    channels-last tile and NCHW arrays."""
    if not isinstance(spec, SpecType) or not isinstance(mode, types.IntegerLiteral):
        return None
    dtype = dst.dtype.name
    if dtype not in _LLVM_TYPES or not (src.dtype == dst.dtype or src.dtype.name in INTEGER_SOURCES):
        return None
    if bias.dtype != dst.dtype:
        return None
    sig = types.void(dst, d0, ds, dn, dlanes, src, s0, ss, sn, slanes, bias, b0, mode, spec)

    def codegen(context, builder, signature, args):
        b = builder
        lanes = spec.lanes
        at = (1, 2, 3, 4, 6, 7, 8, 9, 11)
        d0_, ds_, dn_, dl_, s0_, ss_, sn_, sl_, b0_ = (
            context.cast(b, args[i], signature.args[i], types.int64) for i in at
        )
        pd = context.make_array(signature.args[0])(context, b, args[0]).data
        ps = context.make_array(signature.args[5])(context, b, args[5]).data
        pb = context.make_array(signature.args[10])(context, b, args[10]).data
        i64 = ir.IntType(64)
        vt = ir.VectorType(_LLVM_TYPES[dtype], lanes)
        sdt = np.dtype(src.dtype.name)
        src_int = sdt.kind in "iu"
        st = ir.VectorType(ir.IntType(8 * sdt.itemsize), lanes) if src_int else vt
        fload, _ = _masked(b, vt, _FMA_NAMES[dtype])
        src_ptrs = [
            b.bitcast(b.gep(ps, [b.add(s0_, b.mul(ir.Constant(i64, i), ss_))]), st.as_pointer())
            for i in range(lanes)
        ]
        rows = _rows_in(b, src_ptrs, sn_, sl_, sdt.itemsize, f"i{8 * sdt.itemsize}" if src_int else _FMA_NAMES[dtype])
        if src_int:
            rows = [b.sitofp(v, vt) if sdt.kind == "i" else b.uitofp(v, vt) for v in rows]
        cols = _transposed(b, rows, lanes)
        align = ir.Constant(ir.IntType(32), np.dtype(dtype).itemsize)
        if mode.literal_value == 1:
            bptr = b.bitcast(b.gep(pb, [b0_]), vt.as_pointer())
            none = ir.Constant(vt, [0.0] * lanes)
            bvec = b.call(fload, [bptr, align, _lane_mask(b, lanes, 0, dn_), none])
        values, dst_ptrs = [], []
        for j in range(lanes):
            v = cols[j]
            if mode.literal_value == 1:
                v = b.fadd(v, _splat(b, vt, b.extract_element(bvec, ir.Constant(ir.IntType(32), j))))
            values.append(v)
            dst_ptrs.append(b.bitcast(b.gep(pd, [b.add(d0_, b.mul(ir.Constant(i64, j), ds_))]), vt.as_pointer()))
        rows_out = b.select(b.icmp_signed("<", dn_, sl_), dn_, sl_)
        _rows_out(b, values, dst_ptrs, rows_out, dl_, np.dtype(dtype).itemsize, _FMA_NAMES[dtype])
        return context.get_dummy_value()

    return sig, codegen


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
    spec = (dtype, rows, vectors, lanes, a_bcast, b_bcast)

    @intrinsic
    def kernel(typingctx, a, b, c, k, a0, ak, ar, b0, bk, c0, ldc):
        def codegen(context, builder, signature, args):
            _Block(spec, context, builder, signature, args).emit()
            return context.get_dummy_value()

        return types.void(a, b, c, k, a0, ak, ar, b0, bk, c0, ldc), codegen

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


def _probe(n: int):
    """``(a, b, call)``: random float32 ``n x n`` operands and a call of the
    micro-kernel GEMM on them (packed here, not in ``call``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    rows, vectors = block_for(np.float32)
    _, args, run = _gemm_driver("float32", rows, vectors, lanes_for(np.float32))(a, b)
    return a, b, lambda: run(*args)


def rate_probe(n: int = 1024):
    """``(call, flops)``: one float32 ``n x n x n`` product of the micro-kernel
    GEMM on packed panels, to time in step with another kernel (``numbaconv
    bench`` does, block by block, so a fraction of the micro-kernel's rate
    compares rates measured together)."""
    return _probe(n)[2], 2.0 * n**3


def measure_rate(n: int = 1536, repeat: int = 5) -> dict:
    """GFLOP/s of the micro-kernel GEMM (float32, n x n x n, packing excluded)
    beside numpy's float32 GEMM on the same product, best of ``repeat``."""
    import time

    a, b, call = _probe(n)

    def best(fn):
        t = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
        return 2 * n**3 / t / 1e9

    uk = best(call)
    np_rate = best(lambda: a @ b)
    return {
        "lanes": lanes_for(np.float32),
        "block": list(block_for(np.float32)),
        "ukernel_gflops": uk,
        "numpy_gflops": np_rate,
    }


@functools.cache
def block_call(dtype: str, rows: int, vectors: int, lanes: int, a_bcast: bool, b_bcast: bool):
    """An njit function calling :func:`fma_block`'s kernel once, with the same
    arguments (for callers outside njit code, and the tests)."""
    uk = fma_block(dtype, rows, vectors, lanes, a_bcast, b_bcast)

    @njit
    def call(a, b, c, k, a0, ak, ar, b0, bk, c0, ldc):
        uk(a, b, c, k, a0, ak, ar, b0, bk, c0, ldc)

    return call


_PEAK_K = 64  # k steps a block: its B panel (64 x 4 vectors of float32: 16 KB) stays in a 32 KB L1


@njit(parallel=True, cache=True)
def _peak_loop(a, b, c, ldc, threads, tab, reps, spec):
    # every thread: reps blocks of 6 rows x vectors_for(6) vectors over k on
    # panels in L1, into its own rows of c (flat, ldc a row: no view made in
    # the loop, whose reference count both threads would update)
    for t in prange(threads):
        for _ in range(reps):
            fma_taps(a, b, c, tab, 1, 6, 0, 0, _PEAK_K, 6, 1, ldc, t * 6 * ldc, ldc, spec, 6, 0, 0, 1)


def peak_rate(seconds: float = 0.1) -> float:
    """FLOP/s of the float32 broadcast-A micro-kernel on operands in L1, all
    Numba threads: the arithmetic rate the direct and Winograd paths' costs
    scale by (:mod:`numbaconv.rates`). Best of a few runs of ~``seconds / 5``."""
    import time

    import numba

    spec = spec_for(np.float32)
    nr = vectors_for(6, spec.registers) * spec.lanes
    threads = numba.get_num_threads()
    a = np.full(_PEAK_K * 6, 1e-3, np.float32)
    b = np.full(_PEAK_K * nr, 1e-3, np.float32)
    c = np.zeros(6 * threads * nr, np.float32)
    tab = np.zeros(1, np.int64)
    _peak_loop(a, b, c, nr, threads, tab, 1, spec)  # compile (cached on disk) and warm
    per_rep = 2.0 * threads * _PEAK_K * 6 * nr
    reps = 64
    while True:  # reps for ~seconds / 5 a run
        t0 = time.perf_counter()
        _peak_loop(a, b, c, nr, threads, tab, reps, spec)
        dt = time.perf_counter() - t0
        if dt >= seconds / 5 or reps >= 1 << 24:
            break
        reps *= 4 if dt < seconds / 40 else 2
    best = dt
    for _ in range(4):
        t0 = time.perf_counter()
        _peak_loop(a, b, c, nr, threads, tab, reps, spec)
        best = min(best, time.perf_counter() - t0)
    return per_rep * reps / best


@intrinsic
def prefetch(typingctx, arr, at):
    """A hint: bring the cache line of ``arr[at]`` (a flat array) into the
    caches (LLVM's ``llvm.prefetch``, a read, kept in all levels); no
    effect on values, never a fault."""
    if not isinstance(arr, types.Array) or not isinstance(at, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
        )
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, at), codegen
