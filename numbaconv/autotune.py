"""``method="measure"``: time the candidates on the real arrays, keep the winner.

The winner of each case is remembered in memory and in a JSON file in
``config.cache_dir`` (``autotune.json``), keyed by the hardware fingerprint,
the numbaconv version, the op, the shapes, the dtype and every parameter
(the canonical plan) and the workspace budget, so that later processes skip
the measurement. ``config.measure_cache = False`` (env
``NUMBACONV_MEASURE_CACHE=0``) turns the file off; ``config.cache_dir`` (env
``NUMBACONV_CACHE_DIR``) points it elsewhere.

Writers take an exclusive ``fcntl`` lock on a side file, merge their entry
into what is on disk and replace the file atomically (``os.replace``), so
concurrent processes and threads neither lose each other's entries nor
leave a torn file; readers never see a partial file. A file that cannot be
read or parsed (bad JSON, nested too deep, wrong structure, larger than
:data:`MAX_FILE_BYTES`) is ignored with a RuntimeWarning (and rewritten by
the next measurement), never an error. The file keeps the
:data:`MAX_ENTRIES` most recent winners, so it stays small (~1 MiB), and is
created with the permissions of any new file (the umask), so a cache
directory shared by a group works as the group's umask allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import warnings

from . import config, dispatch
from .files import read_json, write_json_atomic
from .machine import REST_S, fingerprint

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: atomic replace only
    fcntl = None

_MEMO: dict[str, str] = {}
_LOCK = threading.Lock()
# candidates estimated this many times slower than the best estimate are not
# timed (the model is within ~2x; none of them could win)
SKIP_FACTOR = 20.0
MAX_ENTRIES = 2000  # newest winners kept in the file (an entry is ~0.5 KiB)
MAX_FILE_BYTES = 8 * 2**20  # a larger file is not numbaconv's: ignored, then rewritten


def cache_path() -> str:
    return os.path.join(config.cache_dir, "autotune.json")


def _hardware() -> str:
    return hashlib.sha1(json.dumps(fingerprint(), sort_keys=True).encode()).hexdigest()[:16]


def cache_key(op: str, plan, device: str = "cpu") -> str:
    """Hardware fingerprint, version, op, device, the canonical plan (shapes,
    dtype, every parameter) and the workspace budget, as one string."""
    from . import __version__

    fields = (
        f"op={op}",
        f"device={device}",
        f"batched={plan.batched}",
        f"ndim={plan.ndim}",
        f"batch={plan.batch}",
        f"c_in={plan.c_in}",
        f"c_out={plan.c_out}",
        f"groups={plan.groups}",
        f"in={plan.in_size}",
        f"kernel={plan.kernel}",
        f"out={plan.out_size}",
        f"stride={plan.stride}",
        f"dilation={plan.dilation}",
        f"padding={plan.padding}",
        f"output_padding={plan.output_padding}",
        f"mode={plan.padding_mode}",
        f"dtype={plan.dtype.str}",
        f"bias={plan.has_bias}",
        f"workspace={config.workspace_bytes}",
    )
    return f"{_hardware()}|numbaconv-{__version__}|" + ";".join(fields)


def _when(entry: dict) -> float:
    when = entry.get("when")
    return float(when) if isinstance(when, int | float) else 0.0


def _read_file(path: str) -> dict:
    """The cache file's entries; {} (with a RuntimeWarning) when unreadable."""
    try:
        data = read_json(path, MAX_FILE_BYTES)
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ValueError("not a numbaconv autotune cache")
        entries = data["entries"].items()
        return {k: v for k, v in entries if isinstance(v, dict) and isinstance(v.get("method"), str)}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        warnings.warn(
            f"numbaconv: ignoring the unreadable autotune cache {path} ({exc}); "
            "it will be rewritten by the next measurement",
            RuntimeWarning,
            stacklevel=4,
        )
        return {}


@contextlib.contextmanager
def _file_lock(path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a+") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def lookup(key: str) -> str | None:
    """The remembered winner for ``key`` (memory, then the file), or None."""
    with _LOCK:
        hit = _MEMO.get(key)
    if hit is not None or not config.measure_cache:
        return hit
    entry = _read_file(cache_path()).get(key)
    if entry is None:
        return None
    with _LOCK:
        _MEMO[key] = entry["method"]
    return entry["method"]


def store(key: str, method: str, times: dict[str, float]) -> None:
    """Remember ``method`` for ``key`` in memory and (merged, atomically) on disk."""
    with _LOCK:
        _MEMO[key] = method
    if not config.measure_cache:
        return
    path = cache_path()
    try:
        with _LOCK, _file_lock(path):
            entries = _read_file(path)
            entries[key] = {"method": method, "seconds": times, "when": time.time()}
            if len(entries) > MAX_ENTRIES:  # keep the newest
                newest = sorted(entries.items(), key=lambda kv: _when(kv[1]))[-MAX_ENTRIES:]
                entries = dict(newest)
            write_json_atomic(path, {"format": 1, "entries": entries})
    except OSError as exc:  # a read-only or full cache directory: keep the memory entry
        warnings.warn(
            f"numbaconv: could not write the autotune cache {path} ({exc})", RuntimeWarning, stacklevel=3
        )


def forget() -> None:
    """Drop the in-memory winners (the file stays)."""
    with _LOCK:
        _MEMO.clear()


def measure(op: str, plan, execute, device: str = "cpu"):
    """Run ``plan`` with every candidate worth timing and return
    ``(result, Choice)``: the fastest candidate's result.

    ``execute(row)`` runs one method and returns its result. Candidates are
    taken in order of their estimated time; each gets one untimed call (which
    compiles it if needed) and one timed call, until the timed calls have
    taken ``config.measure_time_s`` seconds (at least one candidate always
    runs; the untimed calls are not counted: a first candidate compiling for
    seconds from a cold cache left the others untimed and its method
    remembered as the winner of a race it ran alone). A remembered winner is
    run directly.
    """
    base = dispatch.choose(op, plan, "auto", device)
    key = cache_key(op, plan, device)
    known = lookup(key)
    if known is not None and known in base.estimates:
        reason = f"{known} was measured fastest for this case earlier (autotune cache)"
        choice = dispatch.Choice(known, device, reason, base.estimates, base.unsupported)
        return execute(dispatch.row(op, known, device)), choice
    # candidates within the budget (and auto's pick, which may be over it)
    fits = [n for n in base.estimates if n not in base.over_budget or n == base.method]
    ranked = sorted(fits, key=base.estimates.get)
    best_est = base.estimates[ranked[0]]
    times: dict[str, float] = {}
    best = None
    for name in ranked:
        hopeless = base.estimates[name] > SKIP_FACTOR * best_est
        if times and (hopeless or sum(times.values()) > config.measure_time_s):
            break
        r = dispatch.row(op, name, device)
        execute(r)  # compiles on first use; not timed
        time.sleep(REST_S)  # OpenBLAS threads spin ~0.2 s after a GEMM (see machine.REST_S)
        t0 = time.perf_counter()
        result = execute(r)
        times[name] = time.perf_counter() - t0
        if best is None or times[name] < times[best[0]]:
            best = (name, result)
        del result
    winner = best[0]
    store(key, winner, times)
    others = ", ".join(
        f"{k} {dispatch.format_ms(v)}" for k, v in sorted(times.items(), key=lambda kv: kv[1]) if k != winner
    )
    reason = f"{winner} was measured fastest ({dispatch.format_ms(times[winner])}" + (
        f"; {others})" if others else ")"
    )
    return best[1], dispatch.Choice(winner, device, reason, base.estimates, base.unsupported, times)
