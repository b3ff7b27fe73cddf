"""numbaconv: convolution for NumPy users, compiled with Numba.

Public names only; see ``docs/`` for the guide.
"""

from . import config, shapes
from .api import conv, conv1d, conv2d, conv3d
from .dispatch import UnsupportedMethodError

__version__ = "0.1.0"

__all__ = [
    "UnsupportedMethodError",
    "config",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "shapes",
]
