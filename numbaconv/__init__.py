"""numbaconv: convolution for NumPy users, compiled with Numba.

Public names only; see ``docs/`` for the guide.
"""

from . import config, cuda, shapes, signal
from .api import (
    conv,
    conv1d,
    conv2d,
    conv3d,
    conv_transpose,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
)
from .dispatch import Choice, UnsupportedMethodError
from .explain import Explanation, choose_method, explain

__version__ = "0.1.0"

__all__ = [
    "Choice",
    "Explanation",
    "UnsupportedMethodError",
    "choose_method",
    "config",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "cuda",
    "explain",
    "shapes",
    "signal",
]
