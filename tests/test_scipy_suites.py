"""SciPy's own test classes for the functions numbaconv replaces, run with
numbaconv's functions bound in place of SciPy's.

Each test copies a test module of SciPy's wheel (and SciPy's conftest, which
provides its fixtures) into a temporary folder, binds numbaconv's functions
under SciPy's names right after the module's imports (module globals and the
``signal``/``ndimage`` module it calls them through; SciPy's array-API table
gets the same entries for them, so its decorators accept them), and runs the
named classes in a separate pytest process. Skipped, with the reason, when
SciPy's tests are not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

scipy = pytest.importorskip("scipy")

SIGNAL_CLASSES = (
    "TestConvolve",
    "TestConvolve2d",
    "TestFFTConvolve",
    "TestOAConvolve",
    "TestAllFreqConvolves",
    "TestCorrelateReal",
    "TestCorrelate",
    "TestCorrelateComplex",
    "TestCorrelate2d",
)

SIGNAL_NAMES = (
    "convolve",
    "correlate",
    "fftconvolve",
    "oaconvolve",
    "choose_conv_method",
    "convolve2d",
    "correlate2d",
)

# (SciPy test module, module name the tests call through, numbaconv module,
#  names bound, pytest -k expression, the least number of tests that must pass)
SUITES = {
    "signal": (
        "signal/tests/test_signaltools.py",
        "signal",
        "numbaconv.signal",
        SIGNAL_NAMES,
        " or ".join(SIGNAL_CLASSES),
        11_000,
    ),
    "ndimage": (
        "ndimage/tests/test_filters.py",
        "ndimage",
        "numbaconv.ndimage",
        ("correlate", "convolve", "correlate1d", "convolve1d"),
        "correlate or convolve",
        1_300,
    ),
}

_BIND = """
import types as _nbc_types
import {package} as _nbc_module
from scipy._lib._array_api import xp_capabilities_table as _nbc_table

_nbc_bound = {{_n: getattr(_nbc_module, _n) for _n in {names!r}}}
for _n, _f in _nbc_bound.items():
    if getattr({module}, _n) in _nbc_table:
        _nbc_table[_f] = _nbc_table[getattr({module}, _n)]
globals().update({{_n: _f for _n, _f in _nbc_bound.items() if _n in globals()}})
{module} = _nbc_types.SimpleNamespace(
    **{{**{{_k: getattr({module}, _k) for _k in dir({module}) if not _k.startswith("__")}}, **_nbc_bound}}
)
"""


def _rebound_source(src: str, module: str, package: str, names) -> str:
    """``src`` importing its package's helpers absolutely, with the binding
    inserted before its first top-level decorator, class or function."""
    src = re.sub(r"^from \. import ", "from scipy.ndimage.tests import ", src, flags=re.M)
    first = re.search(r"^(@|class |def )", src, flags=re.M)
    assert first is not None, "no test in the module"
    bind = _BIND.format(package=package, names=tuple(names), module=module)
    return src[: first.start()] + bind + "\n\n" + src[first.start() :]


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_scipy_suite_passes_with_numbaconv_bound(suite, tmp_path):
    rel, module, package, names, select, least = SUITES[suite]
    root = Path(scipy.__file__).parent
    path, conftest = root / rel, root / "conftest.py"
    if not path.exists() or not conftest.exists():
        pytest.skip(f"SciPy's tests are not installed ({path} is missing)")
    pytest.importorskip("hypothesis")  # SciPy's conftest and test_filters import it
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    target = tmp_path / f"test_nbc_{suite}.py"
    target.write_text(_rebound_source(path.read_text(), module, package, names))
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", target.name, "-q", "-p", "no:cacheprovider", "-k", select],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) >= least, summary
    assert "failed" not in summary and "error" not in summary, summary
