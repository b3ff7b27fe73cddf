"""numbaconv's own files in ``config.cache_dir`` (the autotune winners, the
calibration): bounded reads and atomic writes. Ground floor: imports nothing
from numbaconv."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid


def read_json(path: str, max_bytes: int):
    """The JSON value in ``path``; ValueError when the file is over ``max_bytes``
    or not JSON, RecursionError when nested too deep, OSError as ``open``."""
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return json.loads(raw.decode("utf-8"))


def write_json_atomic(path: str, data, indent: int = 0) -> None:
    """Write ``data`` to a new file beside ``path`` (permissions from the
    umask, as for any new file) and move it into place atomically (the
    directory is created if needed)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            json.dump(data, fh, indent=indent, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
