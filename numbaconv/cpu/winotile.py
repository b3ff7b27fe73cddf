"""Winograd tile transforms as generated vector code (intrinsics for njit).

One call transforms one vector of tiles (``spec.lanes`` tiles, one channel):
:func:`tile_in` gathers the tiles' ``alpha_D x alpha_H x alpha_W`` inputs
through int32 offsets (``llvm.masked.gather``; a negative offset is a zero)
and applies ``B^T`` along W, H and D; :func:`tile_out` loads the products
of every transform point, applies ``A^T`` along W, H and D, adds the bias and
scatters the ``m_D x m_H x m_W`` outputs through their offsets
(``llvm.masked.scatter``; a negative offset is not written), or, where each
lane's outputs along W follow one another in memory, as one short vector
store per lane and row (:func:`_store_rows`). Offsets are int32. The matrices
(:func:`matrices`) are constants of the generated
code: zero coefficients cost nothing, +-1 is an add or a subtract, the rest
one FMA; all values stay in registers (or LLVM's spills) between the passes.

The matrices themselves come from :func:`matrices` (Toom-Cook, exact).

The tile shape is a :class:`Tile` argument whose Numba *type* carries ``m``
and ``r`` per dim (and this file's checksum), so a kernel is compiled and
cached on disk once per shape, and an edit of this generator never loads a
stale kernel.
"""

from __future__ import annotations

import functools
import itertools
import math
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from .microkernel import _FMA_NAMES, _LLVM_TYPES, SpecType, _guarded, _masked, _splat

SOURCE_KEY = zlib.crc32(Path(__file__).read_bytes())

# the finite interpolation points, in the order they are taken
_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 3, -3, Fraction(1, 3), Fraction(-1, 3))


def _vandermonde(points, cols: int) -> list:
    # rows p^0 .. p^(cols-1) per point; the point at infinity: [0, ..., 0, 1]
    return [
        [Fraction(0)] * (cols - 1) + [Fraction(1)] if p is None else [Fraction(p) ** j for j in range(cols)]
        for p in points
    ]


def _inverse(a: list) -> list:
    """Inverse of a square matrix of Fractions (Gauss-Jordan, exact)."""
    n = len(a)
    m = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(a)]
    for col in range(n):
        piv = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[piv] = m[piv], m[col]
        p = m[col][col]
        m[col] = [v / p for v in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                f = m[r][col]
                m[r] = [v - f * u for v, u in zip(m[r], m[col])]
    return [row[n:] for row in m]


@functools.cache
def matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of ``F(m, r)`` as float64 arrays (``m x alpha``,
    ``alpha x r``, ``alpha x alpha``, ``alpha = m + r - 1``): for a signal
    ``d`` of ``alpha`` values and a kernel ``g`` of ``r``,
    ``A^T ((G g) * (B^T d))[i] = sum_k g[k] d[i + k]``, exactly in rationals
    (the float64 entries are small integers and their quotients)."""
    alpha = m + r - 1
    if m < 1 or r < 1 or alpha - 1 > len(_POINTS):
        raise ValueError(f"F({m}, {r}) needs {alpha - 1} finite points; {len(_POINTS)} are defined")
    points = list(_POINTS[: alpha - 1]) + [None]
    at = [list(col) for col in zip(*_vandermonde(points, m))]
    g = _vandermonde(points, r)
    bt = [list(col) for col in zip(*_inverse(_vandermonde(points, alpha)))]
    for i, row in enumerate(bt):  # integer rows of B^T; the scale goes to G
        scale = math.lcm(*(v.denominator for v in row))
        bt[i] = [v * scale for v in row]
        g[i] = [v / scale for v in g[i]]
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (at, g, bt))


class Tile:
    """Outputs ``m`` and kernel extent ``r`` per dim (D, H, W) of a Winograd
    tile, as a value whose Numba type carries them."""

    __slots__ = ("m", "r", "version", "numba_type")

    def __init__(self, m, r):
        self.m, self.r, self.version = tuple(map(int, m)), tuple(map(int, r)), SOURCE_KEY
        self.numba_type = None  # its TileType, made once (typed at every kernel call)

    def __repr__(self):
        return f"Tile(m={self.m}, r={self.r})"


class TileType(types.Type):
    def __init__(self, m, r, version):
        self.m, self.r, self.version = m, r, version
        super().__init__(name=f"WinogradTile({m}, {r}, {version})")


@typeof_impl.register(Tile)
def _typeof_tile(val, c):
    if val.numba_type is None:
        val.numba_type = TileType(val.m, val.r, val.version)
    return val.numba_type


register_model(TileType)(models.OpaqueModel)


@unbox(TileType)
def _unbox_tile(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


class _Gen:
    """Shared IR pieces: vector type, FMA, constants, offsets and masks."""

    def __init__(self, dtype, builder, lanes):
        self.b = builder
        self.dtype = dtype
        self.lanes = lanes
        self.et = _LLVM_TYPES[dtype]
        self.vt = ir.VectorType(self.et, lanes)
        self.i64 = ir.IntType(64)
        # offsets as int32: one vector of them per vector of values, one
        # compare for the mask, and a GEP that the gather's addressing takes
        # as is (int64 offsets doubled the integer and mask work: on AMD Zen 4
        # it, not the gathers, bounded the input transform)
        self.it = ir.VectorType(ir.IntType(32), lanes)
        self.ptrs_t = ir.VectorType(self.et.as_pointer(), lanes)
        self.align = np.dtype(dtype).itemsize
        self.fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.vt, [self.vt] * 3), f"llvm.fma.v{lanes}{_FMA_NAMES[dtype]}"
        )

    def vec_ptr(self, base, off, vt=None):
        return self.b.bitcast(self.b.gep(base, [off]), (vt or self.vt).as_pointer())

    def const(self, v):
        return ir.Constant(self.i64, int(v))

    def addresses(self, base_ptr, base_off, offs):
        """Pointers ``base_ptr + base_off + offs`` (a vector) and the mask ``offs >= 0``."""
        b = self.b
        mask = b.icmp_signed(">=", offs, ir.Constant(self.it, [0] * self.lanes))
        return _vector_gep(b, b.gep(base_ptr, [base_off]), offs, self.et, self.ptrs_t), mask

    def combine(self, terms):
        """sum of coefficient * vector over ``terms`` (zero coefficients left out)."""
        b = self.b
        acc = None
        for c, v in terms:
            if c == 0:
                continue
            if acc is None:
                if c == 1:
                    acc = v
                else:
                    acc = b.fmul(_splat(b, self.vt, ir.Constant(self.et, float(c))), v)
            elif c == 1:
                acc = b.fadd(acc, v)
            elif c == -1:
                acc = b.fsub(acc, v)
            else:
                acc = b.call(self.fma, [_splat(b, self.vt, ir.Constant(self.et, float(c))), v, acc])
        return acc if acc is not None else ir.Constant(self.vt, [0.0] * self.lanes)

    def transform(self, values, shape, mats):
        """``values`` (dict (i, j, k) -> vector over ``shape``) with ``mats[axis]``
        (nout x nin, or None: identity) applied along W, H, D."""
        shape = list(shape)
        for axis in (2, 1, 0):
            mat = mats[axis]
            if mat is None:
                continue
            new_shape = list(shape)
            new_shape[axis] = mat.shape[0]
            new = {}
            for idx in itertools.product(*(range(n) for n in new_shape)):
                src = list(idx)
                terms = []
                for i in range(shape[axis]):
                    src[axis] = i
                    terms.append((mat[idx[axis], i], values[tuple(src)]))
                new[idx] = self.combine(terms)
            values, shape = new, new_shape
        return values, tuple(shape)


def _vector_gep(builder, ptr, offs, etype, ptrs_t):
    """``ptr + offs`` as a vector of pointers (a GEP with a vector index,
    which llvmlite's builder does not type: the instruction made here)."""
    instr = ir.instructions.GEPInstr(builder.block, ptr, [offs], inbounds=False, name="", source_etype=etype)
    instr.type = ptrs_t
    builder._insert(instr)
    return instr


def _rows_contiguous(g, rows, step=1):
    """i1: in every lane, each row's first output is written (offset >= 0)
    and its others follow it in memory ``step`` apart (offset ``first + c
    step``) or are not written: a tile's outputs along W, where they do not
    run past the plane (or the dilation's grids space them apart); step 2:
    a phase of a stride-2 transposed op."""
    b = g.b
    zero = ir.Constant(g.it, [0] * g.lanes)
    ok = None
    for row in rows:
        first = row[0][3]
        term = b.icmp_signed(">=", first, zero)
        for c, (_, _, mask, offs) in enumerate(row[1:], 1):
            at = b.icmp_signed("==", offs, b.add(first, ir.Constant(g.it, [c * step] * g.lanes)))
            term = b.and_(term, b.or_(at, b.not_(mask)))
        ok = term if ok is None else b.and_(ok, term)
    mask_t = ir.IntType(g.lanes)
    return b.icmp_unsigned("==", b.bitcast(ok, mask_t), ir.Constant(mask_t, (1 << g.lanes) - 1))


def _store_rows(g, base_ptr, base_off, rows, full, step=1):
    """Each lane's outputs of a row (``mw`` values along W, ``step`` apart in
    memory: :func:`_rows_contiguous`) as one short vector store: the row's
    vectors interleaved by shuffles, then a plain store per lane where every
    output is written (``full``, step 1), else a masked one (step 2: every
    other lane, the others neither read nor written: another phase's
    outputs, maybe another thread's). On AMD Zen 4 a 16-lane scatter costs
    about a cycle per element; these are a shuffle or two and a store per lane."""
    b, lanes = g.b, g.lanes
    mw = len(rows[0])
    short = ir.VectorType(g.et, mw * step)
    bits = ir.VectorType(ir.IntType(1), mw * step)
    _, masked_store = _masked(b, short, _FMA_NAMES[g.dtype])
    align = ir.Constant(ir.IntType(32), g.align)
    i32 = ir.IntType(32)
    base = b.gep(base_ptr, [base_off])

    def interleaved(row):
        vecs = [v for v, _, _, _ in row]
        width = 1
        while width < mw:
            width *= 2
        vecs += [ir.Constant(g.vt, ir.Undefined)] * (width - mw)
        while len(vecs) > 1:  # concatenate pairwise
            n = vecs[0].type.count
            idx = ir.Constant(ir.VectorType(i32, 2 * n), list(range(2 * n)))
            vecs = [b.shuffle_vector(vecs[i], vecs[i + 1], idx) for i in range(0, len(vecs), 2)]
        order = [c * lanes + l for l in range(lanes) for c in range(mw)]
        return b.shuffle_vector(
            vecs[0],
            ir.Constant(vecs[0].type, ir.Undefined),
            ir.Constant(ir.VectorType(i32, len(order)), order),
        )

    def store(with_masks):
        for row in rows:
            both = interleaved(row)
            first = row[0][3]
            masks = [m for _, _, m, _ in row]
            for l in range(lanes):
                lane = ir.Constant(i32, l)
                gap = both.type.count  # a lane of the undefined operand
                picks = [l * mw + p // step if p % step == 0 else gap for p in range(mw * step)]
                value = b.shuffle_vector(
                    both,
                    ir.Constant(both.type, ir.Undefined),
                    ir.Constant(ir.VectorType(i32, mw * step), picks),
                )
                at = b.gep(base, [b.sext(b.extract_element(first, lane), g.i64)])
                ptr = b.bitcast(at, short.as_pointer())
                if with_masks or step > 1:
                    m = ir.Constant(bits, [p % step == 0 for p in range(mw * step)])
                    for c in range(mw if with_masks else 0):
                        m = b.insert_element(m, b.extract_element(masks[c], lane), ir.Constant(i32, c * step))
                    b.call(masked_store, [value, ptr, align, m])
                else:
                    b.store(value, ptr, align=g.align)

    if step > 1:
        store(True)
    else:
        _guarded(b, full, lambda: store(False), lambda: store(True))


def _matrices(tile, side):
    # per dim: B^T (side 0) or A^T (side 1), None for r == 1 (identity)
    out = []
    for m, r in zip(tile.m, tile.r):
        if r == 1:
            out.append(None)
        else:
            at, _, bt = matrices(m, r)
            out.append(at if side else bt)
    return out


def _shape(tile, side):
    alpha = tuple(m + r - 1 for m, r in zip(tile.m, tile.r))
    return alpha if side == 0 else tuple(tile.m)


def _positions(shape):
    return list(itertools.product(*(range(n) for n in shape)))


@intrinsic
def tile_in(typingctx, V, v0, vps, xf, cx, xo, x0, xps, tile, spec):
    """For njit code: the input transform of ``spec.lanes`` tiles of one channel::

        d[p][l] = xf[cx + xo[x0 + p*xps + l]]   (0 where the offset is < 0)
        V[v0 + q*vps + l] = (B^T_D (x) B^T_H (x) B^T_W  d)[q][l]

    for the tile's ``alpha`` positions ``p`` and transform points ``q`` (both
    in (D, H, W) order, row-major), ``l < spec.lanes``."""
    return _tile_in_typed((V, v0, vps, xf, cx, xo, x0, xps, tile, spec), _gathered)


@intrinsic
def tile_in_rows(typingctx, V, v0, vps, xf, cx, xs, x0, xps, tile, spec):
    """:func:`tile_in` for tiles whose inputs along W lie next to each other
    in memory (zero padding, no dilation grid): per row ``r`` of the tile's
    positions in (D, H) and lane ``l``, ``xs[x0 + r*xps + l]`` is the offset
    of the row's first position and ``xs[x0 + (R + r)*xps + l]`` (``R`` the
    rows) a bit mask of the positions that read ``xf`` (the others are zero)::

        d[(r, c)][l] = xf[cx + start + c]   where bit c of the mask is set

    Each lane's row is one masked vector load (lanes the mask leaves out are
    not read) and the rows of a vector of tiles become its positions by
    shuffles: no gathers, which cost about a cycle per element on AMD Zen 4
    and bounded :func:`tile_in` there."""
    return _tile_in_typed((V, v0, vps, xf, cx, xs, x0, xps, tile, spec), _loaded_rows)


def _tile_in_typed(args, inputs):
    """The signature and codegen of tile_in / tile_in_rows for their argument
    types (an int32 table), or None when they do not type."""
    V, xf, table, tile, spec = args[0], args[3], args[5], args[8], args[9]
    if not isinstance(spec, SpecType) or not isinstance(tile, TileType):
        return None
    dtype = V.dtype.name
    if dtype not in _LLVM_TYPES or xf.dtype != V.dtype or table.dtype != types.int32:
        return None
    return types.void(*args), _tile_in_codegen(dtype, tile, spec, inputs)


def _gathered(g, pX, cx, pO, x0, xps, shape):
    """tile_in's inputs: a masked gather per position."""
    b = g.b
    gather = cgutils.get_or_insert_function(
        b.module,
        ir.FunctionType(g.vt, [g.ptrs_t, ir.IntType(32), ir.VectorType(ir.IntType(1), g.lanes), g.vt]),
        f"llvm.masked.gather.v{g.lanes}{_FMA_NAMES[g.dtype]}.v{g.lanes}p0",
    )
    zero = ir.Constant(g.vt, [0.0] * g.lanes)
    values = {}
    for p, pos in enumerate(_positions(shape)):
        offs = b.load(g.vec_ptr(pO, b.add(x0, b.mul(g.const(p), xps)), g.it), align=4)
        ptrs, mask = g.addresses(pX, cx, offs)
        values[pos] = b.call(gather, [ptrs, ir.Constant(ir.IntType(32), g.align), mask, zero])
    return values


def _loaded_rows(g, pX, cx, pS, x0, xps, shape):
    """tile_in_rows' inputs: a masked load per lane and row, then shuffles."""
    b, lanes = g.b, g.lanes
    width = 1
    while width < shape[2]:
        width *= 2
    row_t = ir.VectorType(g.et, width)
    load, _ = _masked(b, row_t, _FMA_NAMES[g.dtype])
    i32, i64 = ir.IntType(32), g.i64
    zero_row = ir.Constant(row_t, [0.0] * width)
    base = b.gep(pX, [cx])
    nrows = shape[0] * shape[1]
    values = {}
    for r in range(nrows):
        at_start = b.add(x0, b.mul(g.const(r), xps))
        at_mask = b.add(x0, b.mul(g.const(nrows + r), xps))
        vecs = []
        for l in range(lanes):
            start = b.load(b.gep(pS, [b.add(at_start, g.const(l))]), align=4)
            bits = b.load(b.gep(pS, [b.add(at_mask, g.const(l))]), align=4)
            mask = b.bitcast(b.trunc(bits, ir.IntType(width)), ir.VectorType(ir.IntType(1), width))
            ptr = b.bitcast(b.gep(base, [b.sext(start, i64)]), row_t.as_pointer())
            vecs.append(b.call(load, [ptr, ir.Constant(i32, g.align), mask, zero_row]))
        while len(vecs) > 1:  # concatenate pairwise: lane l's row at l * width
            n = vecs[0].type.count
            idx = ir.Constant(ir.VectorType(i32, 2 * n), list(range(2 * n)))
            vecs = [b.shuffle_vector(vecs[i], vecs[i + 1], idx) for i in range(0, len(vecs), 2)]
        rows = vecs[0]
        undef = ir.Constant(rows.type, ir.Undefined)
        for c in range(shape[2]):
            idx = ir.Constant(ir.VectorType(i32, lanes), [l * width + c for l in range(lanes)])
            values[(r // shape[1], r % shape[1], c)] = b.shuffle_vector(rows, undef, idx)
    return values


def _tile_in_codegen(dtype, tile, spec, inputs):
    """The codegen of tile_in and tile_in_rows: ``inputs`` makes the values of
    the tile's positions, then ``B^T`` per dim and the stores."""

    def codegen(context, builder, signature, args):
        g = _Gen(dtype, builder, spec.lanes)
        b = builder
        args = list(args)
        for i in (1, 2, 4, 6, 7):
            args[i] = context.cast(builder, args[i], signature.args[i], types.int64)
        pV, pX, pO = (
            context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 3, 5)
        )
        v0_, vps_, cx_, x0_, xps_ = args[1], args[2], args[4], args[6], args[7]
        shape = _shape(tile, 0)
        values = inputs(g, pX, cx_, pO, x0_, xps_, shape)
        values, shape = g.transform(values, shape, _matrices(tile, 0))
        for q, pos in enumerate(_positions(shape)):
            b.store(values[pos], g.vec_ptr(pV, b.add(v0_, b.mul(g.const(q), vps_))), align=g.align)
        return context.get_dummy_value()

    return codegen


@intrinsic
def tile_out(typingctx, of, oc, bias, oo, o0, ops, M, m0, mps, tile, spec):
    """For njit code: the output transform of ``spec.lanes`` tiles of one
    output channel::

        y = (A^T_D (x) A^T_H (x) A^T_W  M)    with M[q][l] = M[m0 + q*mps + l]
        of[oc + oo[o0 + j*ops + l]] = y[j][l] + bias   (where the offset is >= 0)

    for the transform points ``q`` and the tile's outputs ``j`` ((D, H, W)
    order, row-major), ``l < spec.lanes``."""
    if not isinstance(spec, SpecType) or not isinstance(tile, TileType):
        return None
    dtype = of.dtype.name
    if dtype not in _LLVM_TYPES or M.dtype != of.dtype or oo.dtype != types.int32:
        return None
    sig = types.void(of, oc, bias, oo, o0, ops, M, m0, mps, tile, spec)

    def codegen(context, builder, signature, args):
        g = _Gen(dtype, builder, spec.lanes)
        b = builder
        args = list(args)
        for i in (1, 4, 5, 7, 8):
            args[i] = context.cast(builder, args[i], signature.args[i], types.int64)
        args[2] = context.cast(builder, args[2], signature.args[2], of.dtype)
        pF, pO, pM = (
            context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 3, 6)
        )
        oc_, bias_, o0_, ops_, m0_, mps_ = args[1], args[2], args[4], args[5], args[7], args[8]
        shape = _shape(tile, 0)
        values = {}
        for q, pos in enumerate(_positions(shape)):
            values[pos] = b.load(g.vec_ptr(pM, b.add(m0_, b.mul(g.const(q), mps_))), align=g.align)
        values, shape = g.transform(values, shape, _matrices(tile, 1))
        scatter = cgutils.get_or_insert_function(
            b.module,
            ir.FunctionType(
                ir.VoidType(), [g.vt, g.ptrs_t, ir.IntType(32), ir.VectorType(ir.IntType(1), g.lanes)]
            ),
            f"llvm.masked.scatter.v{g.lanes}{_FMA_NAMES[dtype]}.v{g.lanes}p0",
        )
        bv = _splat(b, g.vt, bias_)
        align = ir.Constant(ir.IntType(32), g.align)
        outs, live = [], None
        for j, pos in enumerate(_positions(shape)):
            offs = b.load(g.vec_ptr(pO, b.add(o0_, b.mul(g.const(j), ops_)), g.it), align=4)
            ptrs, mask = g.addresses(pF, oc_, offs)
            outs.append((b.fadd(values[pos], bv), ptrs, mask, offs))
            live = mask if live is None else b.and_(live, mask)
        # every lane of every output written (tiles inside the plane: all but
        # the edge tiles): the scatters without masks, which AVX2 (no scatter
        # instruction) runs as plain stores instead of a branch per lane
        mask_t = ir.IntType(g.lanes)
        full = b.icmp_unsigned("==", b.bitcast(live, mask_t), ir.Constant(mask_t, (1 << g.lanes) - 1))
        every = ir.Constant(ir.VectorType(ir.IntType(1), g.lanes), [1] * g.lanes)

        def scatter_all(masked):
            for value, ptrs, mask, _ in outs:
                b.call(scatter, [value, ptrs, align, mask if masked else every])

        def scattered():
            _guarded(b, full, lambda: scatter_all(False), lambda: scatter_all(True))

        mw = shape[2]
        if mw < 2:
            scattered()
            return context.get_dummy_value()
        rows = [outs[i : i + mw] for i in range(0, len(outs), mw)]

        def strided():  # a stride-2 transposed op's phase; AVX2: masked stores microcoded, scatters kept
            if g.lanes * g.align < 64:
                scattered()
                return
            _guarded(
                b, _rows_contiguous(g, rows, 2), lambda: _store_rows(g, pF, oc_, rows, full, 2), scattered
            )

        _guarded(b, _rows_contiguous(g, rows), lambda: _store_rows(g, pF, oc_, rows, full), strided)
        return context.get_dummy_value()

    return sig, codegen
