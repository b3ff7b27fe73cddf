"""numbaconv on dask arrays: lazy results, computed block by block.

Every front-end (``conv*``, ``conv_transpose*``, :mod:`numbaconv.signal`,
:mod:`numbaconv.ndimage`) hands a dask input here. The result is a dask
array with the in-memory call's shape, dtype and values, built as one task
per output block:

- **Axes.** Each spatial axis is an :class:`Axis`: output position ``o``
  reads the padded positions ``[o * stride, o * stride + span)``, i.e. the
  input indices ``fold_index(p - lo, size, mode)`` (numbaconv's own padding
  arithmetic: PyTorch's reflect, circular, replicate, the SciPy modes, or a
  fill value). Output chunks come from the input chunks (:func:`out_chunks`:
  the outputs whose window is centred in an input chunk), so a block reads
  its chunk and halos of its neighbours, however small the chunks are
  (several neighbours when the halo is longer than a chunk).
- **Blocks.** A task receives exactly the input chunks its window touches
  (by key: the chunks at the other end of the axis too, for a circular
  mode), assembles its slab (the halos concatenated, the padding at the
  array's true edges gathered by the index maps, the fill value where the
  map says -1), and runs the in-memory function on the slab with no padding
  (``'valid'``): the direct, Winograd or FFT path as the dispatcher picks
  per block (large kernels run as FFT inside each block, the halos acting
  as overlap-save).
- **Channels.** Input channels split across chunks are reduced as partial
  sums (one task adds the partial results and the bias); grouped convs are
  rechunked to whole groups instead (no partial sums needed).
- **Transposed op.** A gather: an output block collects the runs of full
  positions that fold into it (one run with zero padding; the edge runs of
  the adjoint padding modes too), each computed from the input positions
  that reach it.
- **Weights** are put in the graph once (one key each); tasks slice them.
- **Threads.** A task runs numbaconv's kernels with ``cores // worker
  threads`` Numba threads (:func:`task_threads`), so that dask's threads
  times Numba's never oversubscribe the cores.

Nothing here imports dask at numbaconv's import: only a dask input does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import threading
import time

import numpy as np

from . import config
from .shapes import fold_index


def is_dask(a) -> bool:
    """Whether ``a`` is a dask array (checked without importing dask)."""
    t = type(a)
    return t.__module__.startswith("dask.") and hasattr(a, "__dask_graph__") and hasattr(a, "chunks")


def require_dask():
    """``dask.array``, or an ImportError that says how to get it."""
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - dask is a test dependency
        raise ImportError("dask arrays need dask: pip install 'numbaconv[dask]'") from exc
    return da


def host(a):
    """A small operand (weight, bias, kernel) as a NumPy array (a dask array
    computed once); None stays None."""
    if a is None:
        return None
    return np.asarray(a.compute() if is_dask(a) else a)


def prepare(op, x, weight, bias, method, device, out, check_device):
    """A dask input's call checked as the in-memory one (``check_device``:
    the API's check) before any task: ``(x, weight, bias, method, result
    dtype)``, the weight and bias as NumPy arrays (a dask weight computed
    once). The blocks run on the CPU: device='cuda' is refused."""
    from . import dispatch

    require_dask()
    check_device(device)
    if device == "cuda":
        raise ValueError(
            "device='cuda' is not supported for dask inputs: their blocks run on the CPU "
            "(pass device='auto' or 'cpu', or give device arrays without dask)"
        )
    no_out(out)
    method = dispatch.check_method(op, method)
    w, b, dtype = _operands(x, weight, bias)
    return x, w, b, method, dtype


def no_out(out, name: str = "out") -> None:
    if out is not None and not isinstance(out, (type, np.dtype, str)):
        raise TypeError(
            f"{name}= cannot be an array for a dask input: the result is a lazy dask array; "
            "write it with dask.array.store / to_zarr (a dtype is accepted where the function takes one)"
        )


# ---------------------------------------------------------------- axes


@dataclasses.dataclass(frozen=True)
class Axis:
    """One spatial axis of a block-wise call: ``out`` outputs, output ``o``
    reading input indices ``fold_index(o * stride + j - lo, size, mode)``
    for ``j < span`` (-1: the fill value). ``local``: the function run on a
    block can pad the array's true edges itself in this mode (given the
    padding and enough of the edge in its slab), so a window there stops at
    the edge instead of gathering the padding."""

    size: int
    out: int
    stride: int
    span: int
    lo: int
    mode: str
    local: bool = False
    centre: int = -1  # the window position an output goes with; -1: its middle

    @property
    def centre_at(self) -> int:
        """The position in an output's window of the input it goes with (the
        chunk holding that input computes the output): the middle, unless
        ``centre`` says (SciPy's filters: the input of the same index)."""
        return (self.span - 1) // 2 if self.centre < 0 else self.centre

    def window(self, o0: int, o1: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Input index (or -1) of each padded position outputs ``[o0, o1)``
        read, and the padding ``(before, after)`` left to the block's
        function (positions past the true edges it pads itself)."""
        p = np.arange(o0 * self.stride, (o1 - 1) * self.stride + self.span, dtype=np.int64) - self.lo
        if self.local:
            inside = p[(p >= 0) & (p < self.size)]
            pads = (int(np.count_nonzero(p < 0)), int(np.count_nonzero(p >= self.size)))
            if inside.size and self._can_pad(pads, inside.size):
                return inside, pads
        mode = "zeros" if self.mode == "constant" else self.mode  # constant: -1 reads the fill (cval)
        return np.asarray(fold_index(p, self.size, mode), dtype=np.int64), (0, 0)

    def _can_pad(self, pads, n: int) -> bool:
        """Whether padding ``pads`` around a slab of ``n`` inputs holding the
        true edge reads only inputs inside the slab."""
        if self.mode in ("zeros", "replicate", "constant"):
            return True
        if self.mode == "symmetric":  # the edge repeated
            return max(pads) <= n
        return max(pads) < n  # reflect (mirror)

    @property
    def halo(self) -> tuple[int, int]:
        """Input positions read before and after the ones an output is centred on."""
        c = self.centre_at
        return c, self.span - 1 - c

    @property
    def reach(self) -> int:
        """Input positions a block reads beyond its own chunk."""
        return self.span - 1

    def chunks_for(self, in_chunks) -> tuple[int, ...]:
        return out_chunks(self, in_chunks)

    def slab_len(self, c: int) -> int:
        """Input positions ``c`` outputs read."""
        return (c - 1) * self.stride + self.span


def out_chunks(axis: Axis, in_chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Output chunks matching the input chunks: output ``o`` goes with the
    input chunk that holds the centre of its window (chunk starts aligned
    to the stride); empty chunks dropped."""
    bounds = np.cumsum((0,) + tuple(in_chunks))
    c = axis.centre_at
    cuts = {0, axis.out}
    for b in bounds[1:-1]:
        cuts.add(int(min(axis.out, max(0, -(-(int(b) + axis.lo - c) // axis.stride)))))
    cuts = sorted(cuts)
    return tuple(b - a for a, b in zip(cuts, cuts[1:]) if b > a) or (axis.out,)


def split_chunks(chunks: tuple[int, ...], parts: int) -> tuple[int, ...]:
    """Each chunk cut into ``parts`` nearly equal pieces (none empty)."""
    out = []
    for c in chunks:
        n = max(1, min(parts, c))
        out += [c // n + (i < c % n) for i in range(n)]
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Source:
    """The input chunks a window touches along one axis, the part of each it
    reads (``ranges``: local ``(lo, hi)``; a neighbour gives only its halo)
    and, for each window position, its index in the concatenation of those
    parts (-1: the fill)."""

    ids: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]
    full: tuple[bool, ...]
    pos: np.ndarray

    @classmethod
    def of(cls, idx: np.ndarray, bounds: np.ndarray) -> Source:
        valid = idx >= 0
        if not valid.any():
            return cls((0,), ((0, 1),), (int(bounds[1]) == 1,), np.full(idx.shape, -1, dtype=np.int64))
        g = idx[valid]
        cid = np.searchsorted(bounds, g, side="right") - 1
        ids = np.unique(cid)
        local = g - bounds[cid]
        lo = np.array([local[cid == i].min() for i in ids])
        hi = np.array([local[cid == i].max() + 1 for i in ids])
        start = np.concatenate(([0], np.cumsum(hi - lo)[:-1]))
        k = np.searchsorted(ids, cid)
        pos = np.full(idx.shape, -1, dtype=np.int64)
        pos[valid] = start[k] + local - lo[k]
        sizes = bounds[ids + 1] - bounds[ids]
        full = tuple(bool(a == 0 and b == n) for a, b, n in zip(lo, hi, sizes))
        ranges = tuple((int(a), int(b)) for a, b in zip(lo, hi))
        return cls(tuple(int(i) for i in ids), ranges, full, pos)


def _pieces(nested, axis: int, at: tuple, out: list) -> tuple:
    """The arrays of a nested list (one level per axis from ``axis``) with
    their offsets along those axes, into ``out``; returns the joined shape."""
    if not isinstance(nested, list):
        out.append((at, nested))
        return nested.shape
    shape, step = None, 0
    for p in nested:
        sub = _pieces(p, axis + 1, at + (step,), out)
        step += sub[axis]
        shape = sub[:axis] + (step,) + sub[axis + 1 :]
    return shape


_SCRATCH = threading.local()


def _scratch(shape, dtype) -> np.ndarray:
    """The calling thread's slab buffer, reused by its next tasks (a fresh
    70 MB array per block paid its page faults every time: mappings this
    large bypass glibc's heap); the block's function never returns a view
    of its input."""
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype=dtype)
    n = count * np.dtype(dtype).itemsize
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.nbytes < n:
        _SCRATCH.buf = buf = None  # the old one freed first
        buf = _SCRATCH.buf = np.empty(n, dtype=np.uint8)
    return buf[:n].view(dtype).reshape(shape)


def _concat(nested, axis: int, dtype=None, scratch: bool = False):
    """A nested list of arrays (one level per axis from ``axis``) joined in
    one copy (cast to ``dtype`` if given; into the thread's scratch buffer
    with ``scratch``); a single array as it is."""
    if not isinstance(nested, list) or _single(nested):
        a = _only(nested)
        return a if dtype is None else a.astype(dtype, copy=False)
    parts: list = []
    shape = _pieces(nested, axis, (), parts)
    dtype = np.dtype(dtype or parts[0][1].dtype)
    out = _scratch(shape, dtype) if scratch else np.empty(shape, dtype=dtype)
    for at, a in parts:
        out[(slice(None),) * axis + tuple(slice(o, o + n) for o, n in zip(at, a.shape[axis:]))] = a
    return out


def _single(nested) -> bool:
    while isinstance(nested, list):
        if len(nested) != 1:
            return False
        nested = nested[0]
    return True


def _only(nested):
    while isinstance(nested, list):
        nested = nested[0]
    return nested


def assemble(nested, positions, first_axis: int, fill, dtype=None) -> np.ndarray:
    """The slab: the chunk parts joined (cast to ``dtype`` if given), then
    along each spatial axis (from ``first_axis``) the window's positions: a
    slice where they are a contiguous run, else that run with the gathered
    padding on either side (-1: the fill value)."""
    a = _concat(nested, first_axis, dtype, scratch=True)
    for i, pos in enumerate(positions):
        ax = first_axis + i
        if pos.size and pos[0] >= 0 and pos[-1] - pos[0] == pos.size - 1 and np.all(np.diff(pos) == 1):
            if pos[0] != 0 or pos.size != a.shape[ax]:
                a = a[(slice(None),) * ax + (slice(int(pos[0]), int(pos[-1]) + 1),)]
            continue
        a = _gather(a, pos, ax, fill)
    return a


def _gather(a, pos, ax: int, fill):
    """``a`` at positions ``pos`` along ``ax`` (-1: ``fill``): the longest
    contiguous run sliced, the rest (the padding) taken, one copy."""
    runs = np.flatnonzero(np.diff(pos) != 1) + 1
    bounds = np.concatenate(([0], runs, [pos.size]))
    longest = int(np.argmax(np.diff(bounds)))
    r0, r1 = int(bounds[longest]), int(bounds[longest + 1])
    shape = list(a.shape)
    shape[ax] = pos.size
    out = np.empty(shape, dtype=a.dtype)
    lead = (slice(None),) * ax

    def put(lo, hi):
        if hi <= lo:
            return
        p = pos[lo:hi]
        part = np.take(a, np.maximum(p, 0), axis=ax)
        if (p < 0).any():
            mask = (p < 0).reshape((-1,) + (1,) * (a.ndim - ax - 1))
            part = np.where(mask, np.asarray(fill, dtype=a.dtype), part)
        out[lead + (slice(lo, hi),)] = part

    if pos[r0] >= 0:
        out[lead + (slice(r0, r1),)] = a[lead + (slice(int(pos[r0]), int(pos[r0]) + r1 - r0),)]
    else:
        put(r0, r1)
    put(0, r0)
    put(r1, pos.size)
    return out


# ---------------------------------------------------------------- threads


_HOST_THREADS: dict = {}  # worker address -> (time, threads of all workers on its host)


def _host_threads(worker) -> int:
    """Threads of every dask worker on this worker's host (worker processes
    of one machine share its cores), asked of the scheduler at most every
    30 s; the worker's own threads where the scheduler cannot say."""
    own = max(1, int(worker.state.nthreads))
    now = time.monotonic()
    seen = _HOST_THREADS.get(worker.address)
    if seen and now - seen[0] < 30:
        return seen[1]
    try:
        from distributed import get_client

        host = worker.address.rsplit(":", 1)[0]
        workers = get_client().scheduler_info(n_workers=-1)["workers"]
        total = sum(int(w["nthreads"]) for addr, w in workers.items() if addr.rsplit(":", 1)[0] == host)
        threads = max(own, total)
    except Exception:  # an old scheduler, a closing client: the worker's own count
        threads = own
    _HOST_THREADS[worker.address] = (now, threads)
    return threads


def worker_threads() -> int:
    """Threads of dask workers sharing the cores of the calling task: in a
    distributed worker, every worker's threads on its host; 1 on the
    calling (main) thread (the synchronous scheduler); else the threaded
    scheduler's pool size (``dask.config`` ``num_workers``, else the cores)."""
    try:
        from distributed import get_worker

        return _host_threads(get_worker())
    except (ImportError, ValueError, AttributeError):
        pass
    if threading.current_thread() is threading.main_thread():
        return 1
    import dask

    n = dask.config.get("num_workers", None)
    if n:
        return max(1, int(n))
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT))


def task_threads() -> int:
    """Numba threads a block task uses: ``config.dask_numba_threads`` when
    set, else the cores (Numba's thread count) divided by the worker's
    threads, at least 1."""
    import numba

    if config.dask_numba_threads:
        return max(1, min(int(config.dask_numba_threads), numba.config.NUMBA_NUM_THREADS))
    return max(1, numba.config.NUMBA_NUM_THREADS // worker_threads())


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """In a process whose allocator was told to trim at every free
    (``MALLOC_TRIM_THRESHOLD_``: dask's nanny sets 64 KiB for its workers),
    let glibc keep up to 256 MiB of freed memory and serve allocations up to
    32 MiB from its heap: else every kernel's per-task buffers are mapped
    and faulted in afresh (numbaconv's blocks measured 2-3x slower in such
    workers). Once per process, glibc only, ``config.dask_tune_malloc``."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not config.dask_tune_malloc or not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    _MALLOC_TUNED = True
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 256 * 2**20)) and bool(
            libc.mallopt(m_mmap_threshold, 32 * 2**20)
        )
    except (OSError, AttributeError):  # pragma: no cover - no glibc
        return False


@contextlib.contextmanager
def _task_context(settings: dict):
    """The caller's numbaconv settings, and the task's Numba threads."""
    import numba

    tune_malloc()
    before = numba.get_num_threads()
    with config.override(**settings):
        numba.set_num_threads(task_threads())
        try:
            yield
        finally:
            numba.set_num_threads(before)


def _settings() -> dict:
    """The calling thread's settings a task takes with it (workers are other
    processes: their own config would not carry the caller's overrides)."""
    keep = (
        "workspace_bytes",
        "direct_layout",
        "simd_lanes",
        "simd_block",
        "dask_numba_threads",
        "dask_tune_malloc",
    )
    return {k: getattr(config, k) for k in keep}


# ---------------------------------------------------------------- graphs


def _token(*parts) -> str:
    from dask.base import tokenize

    return tokenize(*parts)


def _bounds(chunks) -> np.ndarray:
    return np.cumsum((0,) + tuple(chunks))


def _keys_for(dsk: dict, name: str, lead: tuple, sources) -> list:
    """Nested key lists (one level per spatial axis) of the parts of
    ``name``'s chunks ``lead + (i, j, ...)`` that ``sources`` (one
    :class:`Source` per spatial axis) read: a chunk's key where all of it is
    read, else the key of a slicing task added to ``dsk`` (a task then holds
    its neighbours' halos, not their whole chunks)."""
    sources = tuple(sources)

    def nest(prefix, parts, rest):
        if not rest:
            key = (name,) + lead + prefix
            if all(full for _, full in parts):
                return key
            part = (f"{name}-part",) + lead + prefix + tuple(v for r, _ in parts for v in r)
            if part not in dsk:
                dsk[part] = (_take, key, len(lead), [r for r, _ in parts])
            return part
        src = rest[0]
        items = zip(src.ids, src.ranges, src.full)
        return [nest(prefix + (i,), parts + [(r, f)], rest[1:]) for i, r, f in items]

    return nest((), [], sources)


def _take(chunk, lead: int, ranges):
    return chunk[(slice(None),) * lead + tuple(slice(a, b) for a, b in ranges)]


def _block_call(fn, nested, positions, first_axis, fill, settings, *args):
    """A block task: the slab assembled, then ``fn(slab, *args)``."""
    with _task_context(settings):
        slab = assemble(nested, positions, first_axis, fill)
        return fn(slab, *args)


def _sum_call(parts, bias, dtype):
    total = parts[0].astype(dtype, copy=True)
    for p in parts[1:]:
        total += p
    if bias is not None:
        total += bias.reshape((1, -1) + (1,) * (total.ndim - 2)).astype(dtype, copy=False)
    return total


def _add_bias(block, bias, dtype):
    return _sum_call([block], bias, dtype)


@dataclasses.dataclass
class Layout:
    """What :func:`explain_dask` reports of a dask call: the chunks in and
    out, each spatial axis's halo, the tasks and one task's memory."""

    op: str
    input_chunks: tuple
    output_chunks: tuple
    halos: tuple
    tasks: int
    task_bytes: int
    reasons: list

    def __str__(self) -> str:
        lines = [
            f"{self.op} on a dask array: {math.prod(len(c) for c in self.output_chunks)} output blocks, "
            f"{self.tasks} tasks (halo slices and partial sums included)",
            f"  input chunks  {_short(self.input_chunks)}",
            f"  output chunks {_short(self.output_chunks)}",
            f"  halos (before, after) per spatial axis: {self.halos}",
            f"  largest task: ~{self.task_bytes / 2**20:.1f} MiB (slab + result; config.workspace_bytes "
            f"{config.workspace_bytes / 2**20:.0f} MiB on top for the kernel)",
        ]
        return "\n".join(lines + [f"  - {r}" for r in self.reasons])


def _short(chunks) -> str:
    def one(c):
        if len(c) <= 4:
            return str(tuple(c))
        return f"({c[0]}, {c[1]}, ... {c[-1]}: {len(c)} chunks)"

    return "(" + ", ".join(one(c) for c in chunks) + ")"


def plan_axes(x, axes, first_axis: int, lead_bytes: int, out_item: int, reasons: list):
    """The input rechunked where its chunks are shorter than the halo (so
    that a block reads at most three chunks), and the output chunks of each
    spatial axis (``axes``: :class:`Axis` or :class:`TAxis`), split until a
    task's halos fit half of ``config.workspace_bytes`` (a task holds its
    block, input and result, its halos and the kernel's workspace;
    ``lead_bytes``: bytes per spatial element of the slab's leading axes,
    ``out_item`` of the result's). Returns the input, the output chunks and
    a task's bytes (slab and result)."""
    chunks = list(x.chunks)
    for i, ax in enumerate(axes):
        c = chunks[first_axis + i]
        if len(c) > 1 and min(c[:-1]) < ax.reach:
            want = min(ax.size, max(2 * ax.reach, max(c)))
            reasons.append(
                f"spatial axis {i}: input chunks of {min(c[:-1])} are shorter than the halo "
                f"({ax.reach}); rechunked to {want} so that a block reads at most three chunks"
            )
            chunks[first_axis + i] = want
    if tuple(chunks) != tuple(x.chunks):
        x = x.rechunk(tuple(chunks))
    first = [ax.chunks_for(x.chunks[first_axis + i]) for i, ax in enumerate(axes)]
    outs = list(first)

    def task_bytes():
        slab = math.prod(ax.slab_len(max(c)) for c, ax in zip(outs, axes))
        return lead_bytes * slab + out_item * math.prod(max(c) for c in outs)

    def halo_bytes():
        """The slab beyond the inputs the block's own outputs are centred on."""
        slab = math.prod(ax.slab_len(max(c)) for c, ax in zip(outs, axes))
        own = math.prod(max(1, ax.slab_len(max(c)) - ax.reach) for c, ax in zip(outs, axes))
        return lead_bytes * (slab - own)

    # a task holds its block (input and result) and its halos; the halos and
    # the kernel's workspace share config.workspace_bytes
    while halo_bytes() > config.workspace_bytes // 2:
        i = int(np.argmax([max(c) for c in outs]))
        if max(outs[i]) <= 1:
            break
        outs[i] = split_chunks(outs[i], 2)
    if outs != first:
        reasons.append(
            "output blocks split so that a task's halos stay within half of config.workspace_bytes "
            f"({config.workspace_bytes / 2**20:.0f} MiB; the kernel's workspace takes the rest)"
        )
    return x, outs, task_bytes()


def windows(axes: list[Axis], outs, x_chunks, first_axis: int):
    """Per spatial axis, per output chunk: (o0, o1, Source, pads left to
    the block's function)."""
    per_axis = []
    for i, (ax, oc) in enumerate(zip(axes, outs)):
        bounds = _bounds(x_chunks[first_axis + i])
        items = []
        o0 = 0
        for c in oc:
            idx, pads = ax.window(o0, o0 + c)
            items.append((o0, o0 + c, Source.of(idx, bounds), pads))
            o0 += c
        per_axis.append(items)
    return per_axis


def _array(graph_name, dsk, x, chunks, dtype):
    from dask.highlevelgraph import HighLevelGraph

    da = require_dask()
    g = HighLevelGraph.from_collections(graph_name, dsk, dependencies=[x])
    return da.Array(g, graph_name, chunks, dtype=dtype)


def _constants(dsk, token, **values) -> dict:
    """Each value under a key of its own in ``dsk`` (None stays None)."""
    keys = {}
    for name, value in values.items():
        if value is None:
            keys[name] = None
            continue
        key = (f"numbaconv-{name}-{token}",)
        dsk[key] = value
        keys[name] = key
    return keys


def _spatial_grid(wins):
    """Every spatial block: (its index, per axis (o0, o1, Source))."""
    for combo in itertools.product(*[list(enumerate(items)) for items in wins]):
        yield tuple(i for i, _ in combo), tuple(item for _, item in combo)


# ---------------------------------------------------------------- conv


def _group_chunks(chunks, cg: int) -> tuple[int, ...]:
    """Channel chunks moved to whole groups of ``cg`` channels."""
    cuts = {0, sum(chunks)}
    for b in np.cumsum(chunks)[:-1]:
        cuts.add(int(round(b / cg)) * cg)
    cuts = sorted(cuts)
    return tuple(b - a for a, b in zip(cuts, cuts[1:]) if b > a)


def _conv_part(slab, call, w, b, lo, hi, groups, kwargs, dtype):
    """One block's conv (``call``: the in-memory ``conv``): input channels
    ``[lo, hi)`` of the weight (``groups`` 0: one group, a partial sum when
    that is not all of them) or output channels ``[lo, hi)`` (``groups``
    whole groups)."""
    if groups == 0:
        wk, bk = w[:, lo:hi], b
    else:
        wk, bk = w[lo:hi], (None if b is None else b[lo:hi])
    x, wk = slab.astype(dtype, copy=False), wk.astype(dtype, copy=False)
    return call(x, wk, bk, groups=max(groups, 1), **kwargs)


def _channel_split(x, plan, reasons):
    """The input rechunked to whole groups (grouped convs), and per channel
    chunk the weight slice, groups (0: the input channels of one group) and
    output channels: ``(lo, hi, groups, out_lo, out_hi)``."""
    chunks = x.chunks[1]
    G, cg, og = plan.groups, plan.c_in // plan.groups, plan.c_out // plan.groups
    if G > 1:
        aligned = _group_chunks(chunks, cg)
        if aligned != tuple(chunks):
            reasons.append(f"channel chunks moved to whole groups ({cg} channels each): {aligned}")
            x = x.rechunk({1: aligned})
        parts, c0 = [], 0
        for c in x.chunks[1]:
            g0, g1 = c0 // cg, (c0 + c) // cg
            parts.append((g0 * og, g1 * og, g1 - g0, g0 * og, g1 * og))
            c0 += c
        return x, parts
    if len(chunks) > 1:
        reasons.append(f"input channels in {len(chunks)} chunks: partial sums added by one task per block")
    bounds = _bounds(chunks)
    return x, [(int(a), int(b), 0, 0, plan.c_out) for a, b in zip(bounds, bounds[1:])]


def _operands(x, weight, bias):
    """The weight and bias as NumPy arrays, dtypes checked, the result dtype."""
    from .shapes import check_dtype, result_dtype

    w, b = host(weight), host(bias)
    dtypes = [x.dtype, w.dtype] + ([] if b is None else [b.dtype])
    for name, d in zip(("input", "weight", "bias"), dtypes):
        check_dtype(d, name)
    if b is not None and b.ndim != 1:
        raise ValueError(f"bias must be 1-D with shape (C_out,), got shape {b.shape}")
    return w, b, result_dtype(*dtypes)


def _plan_axes(plan) -> list[Axis]:
    """The conv plan's spatial axes."""
    return [
        Axis(
            plan.in_size[i],
            plan.out_size[i],
            plan.stride[i],
            plan.spans[i],
            plan.padding[i][0],
            plan.mode(i),
            plan.mode(i) != "circular",  # the block's conv pads the rest at the true edges
        )
        for i in range(3 - plan.ndim, 3)
    ]


def _task_count(dsk, keys) -> int:
    """Tasks of a graph: blocks, partial sums, halo slices (not the constants)."""
    return len(dsk) - sum(v is not None for v in keys.values())


def _blocks(dsk, name, x, parts, grid, partial, keys, dtype, task_of):
    """One task per batch chunk, spatial block (``grid``: ``(index, item)``)
    and channel part (``task_of(n, c, part, item, bias_key)``); with
    ``partial`` the parts are partial sums that one more task per block adds
    (with the bias)."""
    for n in range(len(x.chunks[0])):
        for s_idx, item in grid:
            part_keys = []
            for c, part in enumerate(parts):
                key = (name + "-part", n, c) + s_idx if partial else (name, n, c) + s_idx
                dsk[key] = task_of(n, c, part, item, None if partial else keys["bias"])
                part_keys.append(key)
            if partial:
                dsk[(name, n, 0) + s_idx] = (_sum_call, part_keys, keys["bias"], dtype)


def _result(op, name, dsk, keys, x, plan, parts, outs, axes, size, reasons, explain):
    """The lazy result (unbatched as the input was), or its :class:`Layout`."""
    cout = (plan.c_out,) if plan.groups == 1 else tuple(p[4] - p[3] for p in parts)
    ochunks = (x.chunks[0], cout) + tuple(outs)
    if explain:
        halos = tuple(ax.halo for ax in axes)
        return Layout(op, x.chunks, ochunks, halos, _task_count(dsk, keys), size, reasons)
    y = _array(name, dsk, x, ochunks, plan.dtype)
    return y if plan.batched else y[0]


def conv(x, plan, w, b, method, call, explain=False):
    """``conv*`` of a dask input ``x`` (see the module docstring), its
    ``plan`` and operands checked by the API (:func:`prepare`); ``call``:
    the in-memory ``conv`` each block runs; ``explain``: the
    :class:`Layout` instead of the result."""
    dtype = plan.dtype
    x = x if plan.batched else x[None]
    reasons: list = []
    x, parts = _channel_split(x, plan, reasons)
    axes = _plan_axes(plan)
    item = np.dtype(dtype).itemsize
    nb, omax = max(x.chunks[0]), max(p[4] - p[3] for p in parts)
    x, outs, size = plan_axes(x, axes, 2, nb * max(x.chunks[1]) * item, nb * omax * item, reasons)
    wins = windows(axes, outs, x.chunks, 2)
    dims = slice(3 - plan.ndim, 3)
    kwargs = dict(
        stride=plan.stride[dims], dilation=plan.dilation[dims], padding_mode=plan.padding_mode, method=method
    )
    settings = _settings()
    token = _token(x.name, w, b, kwargs, plan, settings)
    name = f"numbaconv-conv-{token}"
    dsk: dict = {}
    keys = _constants(dsk, token, weight=w, bias=b)

    def task_of(n, c, part, items, bias_key):
        positions = [it[2].pos for it in items]
        nested = _keys_for(dsk, x.name, (n, c), [it[2] for it in items])
        block_kwargs = {**kwargs, "padding": tuple(it[3] for it in items)}
        args = (call, keys["weight"], bias_key, part[0], part[1], part[2], block_kwargs, dtype)
        return (_block_call, _conv_part, nested, positions, 2, 0, settings) + args

    partial = plan.groups == 1 and len(parts) > 1
    _blocks(dsk, name, x, parts, list(_spatial_grid(wins)), partial, keys, dtype, task_of)
    return _result("conv", name, dsk, keys, x, plan, parts, outs, axes, size, reasons, explain)


# ---------------------------------------------------------------- transposed


@dataclasses.dataclass(frozen=True)
class TAxis:
    """One spatial axis of a transposed op: input ``i`` reaches full
    positions ``i * stride + [0, span)``; full position ``q`` lands on output
    ``fold_index(q - lo, out, mode)`` (the adjoint of conv's padding; zeros:
    dropped outside ``[0, out)``)."""

    size: int
    out: int
    stride: int
    span: int
    lo: int
    hi: int
    mode: str

    @property
    def reach(self) -> int:
        return -(-(self.span - 1) // self.stride)

    @property
    def halo(self) -> tuple[int, int]:
        return self.reach, self.reach

    def chunks_for(self, in_chunks) -> tuple[int, ...]:
        """Output chunks: input chunk ``j``'s outputs start at the full
        position of its first input's window centre."""
        bounds = _bounds(in_chunks)
        c = (self.span - 1) // 2
        cuts = {0, self.out}
        for b in bounds[1:-1]:
            cuts.add(int(min(self.out, max(0, int(b) * self.stride + c - self.lo))))
        cuts = sorted(cuts)
        return tuple(b - a for a, b in zip(cuts, cuts[1:]) if b > a) or (self.out,)

    def slab_len(self, c: int) -> int:
        return -(-(c + self.span - 1) // self.stride) + 1

    def runs(self, o0: int, o1: int) -> list:
        """The runs of full positions landing in outputs ``[o0, o1)``:
        ``(r0, r1, dst)`` (``dst``: each position's output index in the block)."""
        out = [(o0 + self.lo, o1 + self.lo, np.arange(o1 - o0, dtype=np.int64))]
        if self.mode == "zeros":
            return out
        q = np.concatenate(
            (np.arange(0, self.lo), np.arange(self.lo + self.out, self.lo + self.out + self.hi))
        ).astype(np.int64)
        f = np.asarray(fold_index(q - self.lo, self.out, self.mode), dtype=np.int64)
        q, f = q[(f >= o0) & (f < o1)], f[(f >= o0) & (f < o1)]
        for piece in np.split(np.arange(q.size), np.flatnonzero(np.diff(q) != 1) + 1):
            if piece.size:
                out.append((int(q[piece[0]]), int(q[piece[-1]]) + 1, f[piece] - o0))
        return out

    def inputs(self, r0: int, r1: int) -> tuple[int, int]:
        """The inputs reaching full positions ``[r0, r1)``."""
        return max(0, -(-(r0 - self.span + 1) // self.stride)), min(self.size, (r1 - 1) // self.stride + 1)


def _t_axis_items(ax: TAxis, outs, bounds):
    """Per output chunk of one axis: (its chunk ids, its runs as ``(p0, i0,
    n, r0, r1, dst)``, ``p0`` the position of input ``i0`` in the chunks'
    concatenation)."""
    items, o0 = [], 0
    for c in outs:
        runs = []
        for r0, r1, dst in ax.runs(o0, o0 + c):
            i0, i1 = ax.inputs(r0, r1)
            if i1 > i0:
                runs.append((i0, i1, r0, r1, dst))
        need = np.unique(
            np.concatenate([np.arange(i0, i1) for i0, i1, *_ in runs] or [np.zeros(0, np.int64)])
        )
        src = Source.of(need.astype(np.int64), bounds)
        located = [
            (int(src.pos[np.searchsorted(need, i0)]), i0, i1 - i0, r0, r1, d) for i0, i1, r0, r1, d in runs
        ]
        items.append((src, located, c))
        o0 += c
    return items


def _tconv_block(nested, runs, settings, call, w, b, part, kwargs, shape, dtype):
    """One output block of a transposed op (``call``: the in-memory
    ``conv_transpose``): per combination of runs (one per axis) the
    transposed conv of the inputs reaching it, its positions added into the
    block (by index where the padding folds them)."""
    lo, hi, groups, olo, ohi = part  # input channels, groups (0: part of one), output channels
    with _task_context(settings):
        sub = _concat(nested, 2)
        wk = w[lo:hi]
        block = np.zeros(shape, dtype)
        stride = kwargs["stride"]
        for combo in itertools.product(*runs):
            slab = sub[(slice(None),) * 2 + tuple(slice(p0, p0 + n) for p0, _, n, *_ in combo)]
            full = call(
                slab.astype(dtype, copy=False),
                wk.astype(dtype, copy=False),
                None,
                padding=0,
                groups=max(groups, 1),
                **kwargs,
            )
            src, dst = [], []
            for ax, (_, i0, _, r0, r1, d) in enumerate(combo):
                base = i0 * stride[ax]
                a, e = max(r0, base), min(r1, base + full.shape[2 + ax])
                if a >= e:
                    break
                src.append(slice(a - base, e - base))
                dst.append(d[a - r0 : e - r0])
            else:
                vals = full[(slice(None),) * 2 + tuple(src)]
                if all(np.all(np.diff(d) == 1) for d in dst):
                    block[(slice(None),) * 2 + tuple(slice(int(d[0]), int(d[-1]) + 1) for d in dst)] += vals
                else:
                    np.add.at(block, (slice(None), slice(None)) + np.ix_(*dst), vals)
        return block if b is None else _add_bias(block, b[olo:ohi], dtype)


def _t_parts(x, plan, reasons):
    """:func:`_channel_split` for the transposed op (weight ``(C_in, C_out /
    groups, ...)``): per channel chunk ``(lo, hi, groups, out_lo, out_hi)``
    with ``lo, hi`` input channels."""
    G, cg, og = plan.groups, plan.c_in // plan.groups, plan.c_out // plan.groups
    if G > 1:
        aligned = _group_chunks(x.chunks[1], cg)
        if aligned != tuple(x.chunks[1]):
            reasons.append(f"channel chunks moved to whole groups ({cg} channels each): {aligned}")
            x = x.rechunk({1: aligned})
    elif len(x.chunks[1]) > 1:
        reasons.append(
            f"input channels in {len(x.chunks[1])} chunks: partial sums added by one task per block"
        )
    parts, c0 = [], 0
    for c in x.chunks[1]:
        if G > 1:
            g0, g1 = c0 // cg, (c0 + c) // cg
            parts.append((c0, c0 + c, g1 - g0, g0 * og, g1 * og))
        else:
            parts.append((c0, c0 + c, 0, 0, plan.c_out))
        c0 += c
    return x, parts


def conv_transpose(x, plan, w, b, method, call, explain=False):
    """``conv_transpose*`` of a dask input, as a gather over input halos
    (``plan`` and operands as for :func:`conv`; ``call``: the in-memory
    ``conv_transpose`` each block runs)."""
    dtype = plan.dtype
    x = x if plan.batched else x[None]
    reasons: list = []
    x, parts = _t_parts(x, plan, reasons)
    axes = [
        TAxis(
            plan.in_size[i], plan.out_size[i], plan.stride[i], plan.spans[i], *plan.padding[i], plan.mode(i)
        )
        for i in range(3 - plan.ndim, 3)
    ]
    item = np.dtype(dtype).itemsize
    nb, omax = max(x.chunks[0]), max(p[4] - p[3] for p in parts)
    x, outs, size = plan_axes(x, axes, 2, nb * max(x.chunks[1]) * item, nb * omax * item, reasons)
    items = [_t_axis_items(ax, outs[i], _bounds(x.chunks[2 + i])) for i, ax in enumerate(axes)]
    kwargs = dict(stride=plan.stride[3 - plan.ndim :], dilation=plan.dilation[3 - plan.ndim :], method=method)
    settings = _settings()
    token = _token(x.name, w, b, kwargs, plan, settings)
    name = f"numbaconv-conv_transpose-{token}"
    dsk: dict = {}
    keys = _constants(dsk, token, weight=w, bias=b)

    def task_of(n, c, part, combo, bias_key):
        shape = (x.chunks[0][n], part[4] - part[3]) + tuple(it[2] for it in combo)
        nested = _keys_for(dsk, x.name, (n, c), [it[0] for it in combo])
        runs = [it[1] for it in combo]
        return (
            _tconv_block,
            nested,
            runs,
            settings,
            call,
            keys["weight"],
            bias_key,
            part,
            kwargs,
            shape,
            dtype,
        )

    grid = [
        (tuple(i for i, _ in combo), tuple(it for _, it in combo))
        for combo in itertools.product(*[list(enumerate(it)) for it in items])
    ]
    partial = plan.groups == 1 and len(parts) > 1
    _blocks(dsk, name, x, parts, grid, partial, keys, dtype, task_of)
    return _result("conv_transpose", name, dsk, keys, x, plan, parts, outs, axes, size, reasons, explain)


# ---------------------------------------------------------------- front-ends


_BLOCK = threading.local()


def block_pads():
    """Inside a :func:`ndimage_filter` block task: the padding ``(before,
    after)`` per axis the front-end applies to its slab instead of its own
    (the true edges' padding; 0 inside the array), so that it returns just
    the block (the 'valid' part of the slab). None elsewhere."""
    return getattr(_BLOCK, "pads", None)


@contextlib.contextmanager
def _block_pads(pads):
    _BLOCK.pads = pads
    try:
        yield
    finally:
        _BLOCK.pads = None


def _stencil_block(nested, positions, settings, dtype, fill, pads, fn, args, kwargs):
    """A front-end's block: the slab (cast to the compute ``dtype``, the
    fill value outside), ``fn(slab, *args, **kwargs)``; with ``pads`` (per
    axis) under :func:`block_pads`."""
    with _task_context(settings):
        slab = assemble(nested, positions, 0, fill, dtype)
        if pads is None:
            return fn(slab, *args, **kwargs)
        with _block_pads(pads):
            return fn(slab, *args, **kwargs)


def stencil(op, x, axes: list[Axis], fn, args, kwargs, out_dtype, fill=0, dtype=None, pads=False):
    """``fn`` (a front-end) block by block over the dask array ``x``, every
    axis an :class:`Axis`; it returns the block ('valid' on the slab): with
    ``pads`` it is told the padding of the slab's true edges through
    :func:`block_pads` (``local`` axes: the slab stops at the true edges
    and the function pads them)."""
    reasons: list = []
    if x.size == 0:  # nothing to filter: the empty result, as in memory
        shape = tuple(ax.out for ax in axes)
        return require_dask().zeros(shape, dtype=out_dtype), Layout(op, x.chunks, (), (), 0, 0, reasons)
    item = np.dtype(dtype or x.dtype).itemsize
    x, outs, size = plan_axes(x, axes, 0, item, np.dtype(out_dtype).itemsize, reasons)
    wins = windows(axes, outs, x.chunks, 0)
    settings = _settings()
    token = _token(x.name, fn.__module__, fn.__name__, args, kwargs, axes, fill, str(dtype), pads, settings)
    name = f"numbaconv-{op}-{token}"
    dsk: dict = {}
    keys = _constants(dsk, token, arg=args[0] if args else None)
    rest = tuple(args[1:])
    for s_idx, items in _spatial_grid(wins):
        positions = [it[2].pos for it in items]
        edge_pads = tuple(tuple(it[3]) for it in items) if pads else None
        nested = _keys_for(dsk, x.name, (), [it[2] for it in items])
        call_args = ((keys["arg"],) if args else ()) + rest
        dsk[(name,) + s_idx] = (
            _stencil_block,
            nested,
            positions,
            settings,
            dtype,
            fill,
            edge_pads,
            fn,
            list(call_args),
            kwargs,
        )
    layout = Layout(
        op, x.chunks, tuple(outs), tuple(ax.halo for ax in axes), _task_count(dsk, keys), size, reasons
    )
    return _array(name, dsk, x, tuple(outs), out_dtype), layout


def ndimage_filter(func, x, kwargs: dict, sizes, origins, modes):
    """A :mod:`numbaconv.ndimage` filter of the dask array ``x``: ``sizes``,
    correlation ``origins`` (a convolution's already turned into its
    correlation's) and modes per axis of ``x`` (SciPy's, as fold modes: how
    a window reads past the true edges; a gather where the block's call
    cannot pad it itself, wrap needing the other end). Arguments are
    checked by a call on a one-element array (SciPy's errors, the result
    dtype); each block's slab holds the inputs its outputs read, and the
    function, told the slab's padding (:func:`block_pads`), returns just
    the block: no halo outputs computed and cropped."""
    no_out(kwargs.get("output"), "output")
    probe = func(np.zeros((1,) * x.ndim, dtype=x.dtype), **kwargs)
    axes = []
    for L, k, o, m in zip(x.shape, sizes, origins, modes):
        lo = k // 2 + int(o)  # output i reads inputs i - lo .. i - lo + k - 1
        axes.append(Axis(L, L, 1, k, lo, m, m != "circular", centre=lo))
    y, _ = stencil(func.__name__, x, axes, func, (), kwargs, probe.dtype, pads=True)
    return y


def signal_filter(func, x, in2, kwargs: dict, pads, fold: str, fill=0, dtype=None):
    """A :mod:`numbaconv.signal` function of the dask array ``x`` and the
    in-memory ``in2``: per axis the ``(lo, hi)`` padding of the correlation
    its mode means (``fold``: how the padding reads the input; ``fill``
    outside for 'zeros'); each block is ``func(slab, in2, mode='valid')``.
    ``dtype``: the compute dtype the slab is cast to (before the fill)."""
    axes = []
    for L, k, (lo, hi) in zip(x.shape, in2.shape, pads):
        axes.append(Axis(L, L + lo + hi - k + 1, 1, k, lo, fold if (lo or hi) else "zeros"))
    probe = func(np.zeros(in2.shape, dtype=x.dtype), in2, **{**kwargs, "mode": "valid"})
    y, _ = stencil(
        func.__name__, x, axes, func, (in2,), {**kwargs, "mode": "valid"}, probe.dtype, fill, dtype
    )
    return y
