"""Every invalid argument gets a ValueError/TypeError naming the parameter and the value."""

from __future__ import annotations

import re

import numpy as np
import pytest

import numbaconv as nc

X = np.zeros((2, 4, 8, 8))
W = np.zeros((6, 4, 3, 3))


def _raises(exc, *parts, fn):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for part in parts:
        assert re.search(part, msg), f"{part!r} not in message: {msg}"
    return msg


CASES = [
    # (id, exception, message parts, call)
    ("input ndim", ValueError, ["input", "ndim=2"], lambda: nc.conv2d(np.zeros((4, 8)), W)),
    ("weight ndim", ValueError, ["weight", "ndim=3"], lambda: nc.conv2d(X, np.zeros((6, 4, 3)))),
    ("conv weight ndim", ValueError, ["weight", "ndim=6"], lambda: nc.conv(X, np.zeros((1,) * 6))),
    (
        "channel mismatch",
        ValueError,
        ["channel mismatch", "C_in=4", r"weight.shape\[1\]=2"],
        lambda: nc.conv2d(X, np.zeros((6, 2, 3, 3))),
    ),
    (
        "groups not dividing C_in",
        ValueError,
        ["groups=3", "C_in=4"],
        lambda: nc.conv2d(X, np.zeros((6, 1, 3, 3)), groups=3),
    ),
    (
        "groups not dividing C_out",
        ValueError,
        ["groups=2", "C_out=weight.shape.0.=5"],
        lambda: nc.conv2d(X, np.zeros((5, 2, 3, 3)), groups=2),
    ),
    ("groups zero", ValueError, ["groups", "0"], lambda: nc.conv2d(X, W, groups=0)),
    ("groups negative", ValueError, ["groups", "-1"], lambda: nc.conv2d(X, W, groups=-1)),
    ("groups float", TypeError, ["groups", "2.0"], lambda: nc.conv2d(X, W, groups=2.0)),
    ("stride zero", ValueError, ["stride", "0"], lambda: nc.conv2d(X, W, stride=0)),
    ("stride negative tuple", ValueError, ["stride", r"\(1, -2\)"], lambda: nc.conv2d(X, W, stride=(1, -2))),
    ("stride float", TypeError, ["stride", "1.5"], lambda: nc.conv2d(X, W, stride=1.5)),
    ("stride None", TypeError, ["stride", "None"], lambda: nc.conv2d(X, W, stride=None)),
    ("stride bool", TypeError, ["stride", "True"], lambda: nc.conv2d(X, W, stride=True)),
    (
        "stride wrong length",
        ValueError,
        ["stride", r"\(1, 1, 1\)", "length 3"],
        lambda: nc.conv2d(X, W, stride=(1, 1, 1)),
    ),
    ("stride tuple of floats", TypeError, ["stride", r"1\.0"], lambda: nc.conv2d(X, W, stride=(1.0, 1))),
    ("dilation zero", ValueError, ["dilation", "0"], lambda: nc.conv2d(X, W, dilation=0)),
    ("dilation float", TypeError, ["dilation", "2.0"], lambda: nc.conv2d(X, W, dilation=2.0)),
    ("padding negative", ValueError, ["padding", "-1"], lambda: nc.conv2d(X, W, padding=-1)),
    (
        "padding negative pair",
        ValueError,
        ["padding", r"\(0, -1\)"],
        lambda: nc.conv2d(X, W, padding=((0, -1), 0)),
    ),
    (
        "padding bad string",
        ValueError,
        ["padding", "'full'", "same", "valid"],
        lambda: nc.conv2d(X, W, padding="full"),
    ),
    ("padding float", TypeError, ["padding", "1.5"], lambda: nc.conv2d(X, W, padding=1.5)),
    ("padding None", TypeError, ["padding", "None"], lambda: nc.conv2d(X, W, padding=None)),
    ("padding wrong length", ValueError, ["padding", "length 3"], lambda: nc.conv2d(X, W, padding=(1, 1, 1))),
    (
        "padding bad pair",
        TypeError,
        ["padding", r"\(1, 2, 3\)"],
        lambda: nc.conv2d(X, W, padding=((1, 2, 3), 0)),
    ),
    (
        "kernel larger than padded input",
        ValueError,
        ["kernel larger", "size 8", "spans 9"],
        lambda: nc.conv2d(X, np.zeros((6, 4, 9, 3))),
    ),
    (
        "dilated kernel too large",
        ValueError,
        ["kernel larger", "dilation 4"],
        lambda: nc.conv2d(X, W, dilation=4),
    ),
    (
        "reflect padding too large",
        ValueError,
        ["reflect", "size 8", r"padding \(8, 8\)"],
        lambda: nc.conv2d(X, W, padding=8, padding_mode="reflect"),
    ),
    (
        "circular padding too large",
        ValueError,
        ["circular", "size 8", r"\(9, 9\)"],
        lambda: nc.conv2d(X, W, padding=9, padding_mode="circular"),
    ),
    (
        "unknown padding_mode",
        ValueError,
        ["padding_mode", "'mirror'", "'reflect'"],
        lambda: nc.conv2d(X, W, padding=1, padding_mode="mirror"),
    ),
    ("padding_mode not str", TypeError, ["padding_mode", "3"], lambda: nc.conv2d(X, W, padding_mode=3)),
    ("bias wrong shape", ValueError, ["bias", r"\(6,\)", r"\(5,\)"], lambda: nc.conv2d(X, W, np.zeros(5))),
    ("bias 2-D", ValueError, ["bias", r"\(6, 1\)"], lambda: nc.conv2d(X, W, np.zeros((6, 1)))),
    ("bool dtype", TypeError, ["input", "bool", "astype"], lambda: nc.conv2d(X.astype(bool), W)),
    ("object dtype", TypeError, ["weight", "object"], lambda: nc.conv2d(X, W.astype(object))),
    (
        "string dtype",
        TypeError,
        ["input", "<U1"],
        lambda: nc.conv1d(np.array([["a", "b", "c"]]), W[:, :1, 0]),
    ),
    (
        "integer arrays",
        TypeError,
        ["int64", "astype"],
        lambda: nc.conv2d(X.astype(np.int64), W.astype(np.int64)),
    ),
    (
        "float16 arrays",
        TypeError,
        ["float16", "astype"],
        lambda: nc.conv2d(X.astype(np.float16), W.astype(np.float16)),
    ),
    (
        "unknown method",
        ValueError,
        ["method", "'toom'", "'auto'", "'direct'"],
        lambda: nc.conv2d(X, W, method="toom"),
    ),
    ("method not str", TypeError, ["method", "None"], lambda: nc.conv2d(X, W, method=None)),
    ("unknown device", ValueError, ["device", "'tpu'"], lambda: nc.conv2d(X, W, device="tpu")),
    ("cuda unavailable", ValueError, ["device='cuda'"], lambda: nc.conv2d(X, W, device="cuda")),
    ("input None", TypeError, ["input", "None"], lambda: nc.conv2d(None, W)),
    (
        "empty channel dim",
        ValueError,
        ["input", "empty"],
        lambda: nc.conv2d(np.zeros((2, 0, 8, 8)), W[:, :0]),
    ),
    ("empty spatial dim", ValueError, ["input", "empty"], lambda: nc.conv2d(np.zeros((2, 4, 0, 8)), W)),
]

Y = np.zeros((2, 4, 3, 3))  # transposed input
WT = np.zeros((4, 3, 3, 3))  # transposed weight (C_in, C_out/groups, k)

TRANSPOSE_CASES = [
    (
        "negative output_padding",
        ValueError,
        ["output_padding", "-1"],
        lambda: nc.conv_transpose2d(Y, WT, stride=2, output_padding=-1),
    ),
    (
        "output_padding too large",
        ValueError,
        ["output_padding must be smaller than either stride or dilation", "stride=2", "dilation=1", "2"],
        lambda: nc.conv_transpose2d(Y, WT, stride=2, output_padding=2),
    ),
    (
        "output_padding with stride 1",
        ValueError,
        ["output_padding", r"\(0, 1\)", "stride=1"],
        lambda: nc.conv_transpose2d(Y, WT, output_padding=(0, 1)),
    ),
    (
        "output_padding float",
        TypeError,
        ["output_padding", "0.5"],
        lambda: nc.conv_transpose2d(Y, WT, stride=2, output_padding=0.5),
    ),
    (
        "output_size too large",
        ValueError,
        [r"requested an output size of \[9, 8\]", r"valid sizes range from \[7, 7\] to \[8, 8\]"],
        lambda: nc.conv_transpose2d(Y, WT, stride=2, output_size=(9, 8)),
    ),
    (
        "output_size too small",
        ValueError,
        [r"requested an output size of \[6, 7\]", r"\[7, 7\] to \[8, 8\]"],
        lambda: nc.conv_transpose2d(Y, WT, stride=2, output_size=(6, 7)),
    ),
    (
        "output_size wrong length",
        ValueError,
        ["output_size", "2 entries", r"\(8,\)"],
        lambda: nc.conv_transpose2d(Y, WT, stride=2, output_size=(8,)),
    ),
    (
        "output_size not a tuple",
        TypeError,
        ["output_size", "8"],
        lambda: nc.conv_transpose2d(Y, WT, stride=2, output_size=8),
    ),
    (
        "output_size and output_padding",
        ValueError,
        ["output_padding or output_size, not both"],
        lambda: nc.conv_transpose2d(Y, WT, stride=2, output_padding=1, output_size=(8, 8)),
    ),
    (
        "transposed channel mismatch",
        ValueError,
        ["channel mismatch", "C_in=4", r"weight.shape\[0\]=5"],
        lambda: nc.conv_transpose2d(Y, np.zeros((5, 3, 3, 3))),
    ),
    (
        "transposed groups not dividing C_in",
        ValueError,
        ["groups=3", "C_in=4"],
        lambda: nc.conv_transpose2d(Y, WT, groups=3),
    ),
    (
        "transposed padding same",
        ValueError,
        ["padding='same'", "transposed"],
        lambda: nc.conv_transpose2d(Y, WT, padding="same"),
    ),
    (
        "transposed padding too large",
        ValueError,
        ["padding too large", "size -1"],
        lambda: nc.conv_transpose2d(Y, WT, padding=3),
    ),
    (
        "transposed reflect padding",
        ValueError,
        ["reflect", "smaller than the size of the output of the transposed convolution", r"\(4, 4\)"],
        lambda: nc.conv_transpose2d(Y, WT, padding=(0, 4), stride=3, padding_mode="reflect"),
    ),
    (
        "transposed bias shape",
        ValueError,
        ["bias", r"\(3,\)", r"\(4,\)"],
        lambda: nc.conv_transpose2d(Y, WT, np.zeros(4)),
    ),
    (
        "transposed unknown method",
        ValueError,
        ["unknown method 'direct'", "'scatter'", "'gather'"],
        lambda: nc.conv_transpose2d(Y, WT, method="direct"),
    ),
    (
        "transposed weight ndim",
        ValueError,
        ["weight", "ndim=3", r"\(C_in, C_out/groups, \*kernel\)"],
        lambda: nc.conv_transpose2d(Y, np.zeros((4, 3, 3))),
    ),
    (
        "transposed integer dtype",
        TypeError,
        ["int64", "astype"],
        lambda: nc.conv_transpose2d(Y.astype(np.int64), WT.astype(np.int64)),
    ),
]


X1 = np.ones((1, 2, 9))
W1 = np.ones((3, 2, 3))
XT = np.ones((1, 3, 5, 5))
WTR = np.ones((3, 2, 3, 3))
S2 = np.ones((6, 6))
K2 = np.ones((3, 3))


def _out(shape, dtype=np.float64, writeable=True):
    a = np.zeros(shape, dtype)
    a.flags.writeable = writeable
    return a


# issue 13's reproducers and a second look: more bad inputs, every public entry point
MORE_CASES = [
    (
        "stride 2**64",
        ValueError,
        ["stride", "2\\*\\*62", "18446744073709551616"],
        lambda: nc.conv1d(X1, W1, stride=2**64),
    ),
    ("padding 2**70", ValueError, ["padding", "2\\*\\*62"], lambda: nc.conv1d(X1, W1, padding=2**70)),
    (
        "padding pair 2**70",
        ValueError,
        ["padding", "2\\*\\*62"],
        lambda: nc.conv1d(X1, W1, padding=((0, 2**70),)),
    ),
    ("dilation 2**63", ValueError, ["dilation", "2\\*\\*62"], lambda: nc.conv1d(X1, W1, dilation=2**63)),
    (
        "output_padding 2**63",
        ValueError,
        ["output_padding"],
        lambda: nc.conv_transpose1d(X1, np.ones((2, 3, 3)), output_padding=2**63),
    ),
    (
        "result too big (padding 1e9 in 3-D)",
        ValueError,
        ["result would have", "more than any array can hold", "padding"],
        lambda: nc.conv3d(np.ones((1, 1, 2, 2, 2)), np.ones((1, 1, 1, 1, 1)), padding=10**9),
    ),
    (
        "transposed result too big (stride 1e18)",
        ValueError,
        ["result would have", "stride"],
        lambda: nc.conv_transpose1d(X1, np.ones((2, 3, 3)), stride=10**18),
    ),
    (
        "out np.matrix",
        TypeError,
        ["out", "matrix"],
        lambda: nc.conv1d(np.ones((2, 9)), W1, out=np.zeros((3, 7)).view(np.matrix)),
    ),
    ("out list", TypeError, ["out", "list"], lambda: nc.conv1d(X1, W1, out=[0.0] * 21)),
    (
        "out wrong dtype",
        ValueError,
        ["out has dtype float32", "float64"],
        lambda: nc.conv1d(X1, W1, out=_out((1, 3, 7), np.float32)),
    ),
    (
        "out wrong shape",
        ValueError,
        ["out has shape \\(1, 3, 8\\)", "\\(1, 3, 7\\)"],
        lambda: nc.conv1d(X1, W1, out=_out((1, 3, 8))),
    ),
    (
        "out read-only",
        ValueError,
        ["out is read-only"],
        lambda: nc.conv1d(X1, W1, out=_out((1, 3, 7), writeable=False)),
    ),
    (
        "out overlaps weight",
        ValueError,
        ["out overlaps weight"],
        lambda: (lambda w: nc.conv1d(np.ones((1, 3, 3)), w, out=w[:1, :3, :1]))(np.zeros((3, 3, 3))),
    ),
    ("padding_mode None", TypeError, ["padding_mode", "None"], lambda: nc.conv1d(X1, W1, padding_mode=None)),
    (
        "padding_mode mirror",
        ValueError,
        ["padding_mode", "'mirror'"],
        lambda: nc.conv1d(X1, W1, padding=1, padding_mode="mirror"),
    ),
    ("padding SAME", ValueError, ["padding", "'SAME'"], lambda: nc.conv1d(X1, W1, padding="SAME")),
    (
        "padding triple",
        TypeError,
        ["padding", "\\(1, 2, 3\\)"],
        lambda: nc.conv1d(X1, W1, padding=((1, 2, 3),)),
    ),
    ("padding negative pair", ValueError, ["padding", "-1"], lambda: nc.conv1d(X1, W1, padding=((1, -1),))),
    (
        "padding float in tuple",
        TypeError,
        ["padding", "1.5"],
        lambda: nc.conv2d(XT, np.ones((2, 3, 3, 3)), padding=(1.5, 1)),
    ),
    ("groups str", TypeError, ["groups", "'2'"], lambda: nc.conv1d(X1, W1, groups="2")),
    ("weight None", TypeError, ["weight", "None"], lambda: nc.conv1d(X1, None)),
    ("input str", TypeError, ["input", "dtype"], lambda: nc.conv1d("abc", W1)),
    (
        "input ragged",
        TypeError,
        ["input", "could not be converted"],
        lambda: nc.conv1d([[1.0, 2.0], [3.0]], W1),
    ),
    (
        "float16 arrays",
        TypeError,
        ["float16", "float32"],
        lambda: nc.conv1d(X1.astype(np.float16), W1.astype(np.float16)),
    ),
    (
        "int32 arrays",
        TypeError,
        ["int32", "astype"],
        lambda: nc.conv1d(X1.astype(np.int32), W1.astype(np.int32)),
    ),
    ("method int", TypeError, ["method", "3"], lambda: nc.conv1d(X1, W1, method=3)),
    ("method FFT", ValueError, ["method 'FFT'", "'fft'"], lambda: nc.conv1d(X1, W1, method="FFT")),
    ("device None", ValueError, ["device", "None"], lambda: nc.conv1d(X1, W1, device=None)),
    ("device gpu", ValueError, ["device", "'gpu'"], lambda: nc.conv1d(X1, W1, device="gpu")),
    ("bias length", ValueError, ["bias", "\\(3,\\)", "\\(2,\\)"], lambda: nc.conv1d(X1, W1, np.ones(2))),
    ("bias str dtype", TypeError, ["bias", "dtype"], lambda: nc.conv1d(X1, W1, np.array(["a", "b", "c"]))),
    (
        "reflect padding >= size",
        ValueError,
        ["reflect", "size 9", "\\(9, 9\\)"],
        lambda: nc.conv1d(X1, W1, padding=9, padding_mode="reflect"),
    ),
    (
        "circular padding > size",
        ValueError,
        ["circular", "size 9", "\\(10, 10\\)"],
        lambda: nc.conv1d(X1, W1, padding=10, padding_mode="circular"),
    ),
    (
        "kernel over the padded input",
        ValueError,
        ["kernel larger than the padded input", "dilation 5"],
        lambda: nc.conv1d(X1, W1, dilation=5),
    ),
    ("conv1d given 2-D data", ValueError, ["input", "ndim=4"], lambda: nc.conv1d(XT, W1)),
    ("conv with 7-D weight", ValueError, ["weight", "ndim=7"], lambda: nc.conv(X1, np.ones((1,) * 7))),
    ("empty weight dim", ValueError, ["weight", "empty"], lambda: nc.conv1d(X1, np.ones((3, 2, 0)))),
    (
        "empty channel dim",
        ValueError,
        ["input", "empty"],
        lambda: nc.conv1d(np.ones((1, 0, 9)), np.ones((3, 0, 3))),
    ),
    (
        "transposed output_padding too big",
        ValueError,
        ["output_padding", "stride", "dilation"],
        lambda: nc.conv_transpose2d(XT, WTR, stride=2, output_padding=2),
    ),
    (
        "transposed output_size and output_padding",
        ValueError,
        ["output_padding or output_size"],
        lambda: nc.conv_transpose2d(XT, WTR, stride=2, output_padding=1, output_size=(12, 12)),
    ),
    (
        "transposed output_size out of range",
        ValueError,
        ["output size of \\[20, 20\\]", "valid sizes range"],
        lambda: nc.conv_transpose2d(XT, WTR, stride=2, output_size=(20, 20)),
    ),
    (
        "transposed output_size length",
        ValueError,
        ["output_size", "length 4"] if False else ["output_size", "entries"],
        lambda: nc.conv_transpose2d(XT, WTR, output_size=(1, 1, 1, 7, 7)),
    ),
    (
        "transposed output_size floats",
        TypeError,
        ["output_size", "ints"],
        lambda: nc.conv_transpose2d(XT, WTR, output_size=(7.0, 7.0)),
    ),
    (
        "transposed output_size int",
        TypeError,
        ["output_size", "7"],
        lambda: nc.conv_transpose2d(XT, WTR, output_size=7),
    ),
    (
        "transposed padding same",
        ValueError,
        ["'same'", "transposed"],
        lambda: nc.conv_transpose2d(XT, WTR, padding="same"),
    ),
    (
        "transposed padding too large",
        ValueError,
        ["padding too large"],
        lambda: nc.conv_transpose2d(XT, WTR, padding=5),
    ),
    ("transposed groups", ValueError, ["groups=2", "C_in=3"], lambda: nc.conv_transpose2d(XT, WTR, groups=2)),
    (
        "transposed method direct",
        ValueError,
        ["unknown method 'direct'", "'scatter'"],
        lambda: nc.conv_transpose2d(XT, WTR, method="direct"),
    ),
    (
        "choose_method int8 dtype",
        TypeError,
        ["dtype", "int8"],
        lambda: nc.choose_method("conv", (1, 1, 5), (1, 1, 3), dtype=np.int8),
    ),
    ("choose_method op", ValueError, ["op", "'deconv'"], lambda: nc.choose_method("deconv", X1, W1)),
    (
        "choose_method fractional shape",
        TypeError,
        ["input shape", "3.5"],
        lambda: nc.choose_method("conv", (1, 3.5, 8, 8), (4, 3, 3, 3)),
    ),
    (
        "choose_method device",
        ValueError,
        ["device", "'auto'"],
        lambda: nc.choose_method("conv", X1, W1, device="auto"),
    ),
    (
        "explain bad method",
        ValueError,
        ["unknown method 'nope'"],
        lambda: nc.explain("conv", X1, W1, method="nope"),
    ),
    ("explain device", ValueError, ["device", "'tpu'"], lambda: nc.explain("conv", X1, W1, device="tpu")),
    ("explain unknown parameter", TypeError, ["strides"], lambda: nc.explain("conv", X1, W1, strides=2)),
    (
        "signal axes 1.9",
        ValueError,
        ["axes must be a scalar or iterable of integers"],
        lambda: nc.signal.fftconvolve(S2, K2, axes=1.9),
    ),
    ("signal convolve axes 1.9", ValueError, ["axes must be"], lambda: nc.signal.convolve(S2, K2, axes=1.9)),
    (
        "signal axes out of range",
        ValueError,
        ["axes exceeds dimensionality"],
        lambda: nc.signal.convolve(S2, K2, axes=5),
    ),
    ("signal axes repeated", ValueError, ["unique"], lambda: nc.signal.convolve(S2, K2, axes=[0, 0])),
    ("signal mode", ValueError, ["mode", "bogus"], lambda: nc.signal.convolve(S2, K2, mode="bogus")),
    (
        "signal method",
        ValueError,
        ["'auto', 'direct', or 'fft'"],
        lambda: nc.signal.convolve(S2, K2, method="bogus"),
    ),
    ("signal ndim mismatch", ValueError, ["same dimensionality"], lambda: nc.signal.convolve(S2, np.ones(3))),
    (
        "signal object dtype",
        ValueError,
        ["Unsupported type"],
        lambda: nc.signal.convolve(S2.astype(object), K2),
    ),
    (
        "signal four axes",
        ValueError,
        ["at most 3 axes"],
        lambda: nc.signal.convolve(np.ones((2,) * 4), np.ones((2,) * 4)),
    ),
    (
        "shapes stride 0",
        ValueError,
        ["stride", "0"],
        lambda: nc.shapes.conv_output_shape((1, 2, 9), (3, 2, 3), stride=0),
    ),
    (
        "shapes output_padding_for 2-D weight",
        ValueError,
        ["weight", "3, 4 or 5"],
        lambda: nc.shapes.output_padding_for((1, 2, 9), (3, 3), (9,)),
    ),
    (
        "config override unknown",
        ValueError,
        ["unknown numbaconv.config setting", "nonsense"],
        lambda: nc.config.override(nonsense=1).__enter__(),
    ),
]


ALL_CASES = CASES + TRANSPOSE_CASES + MORE_CASES


@pytest.mark.parametrize("exc, parts, fn", [c[1:] for c in ALL_CASES], ids=[c[0] for c in ALL_CASES])
def test_invalid_argument(exc, parts, fn):
    _raises(exc, *parts, fn=fn)


def test_out_validation_before_any_write():
    y = nc.conv2d(X, W)
    sentinel = np.full(y.shape, 7.0)
    cases = [
        (ValueError, ["out", "shape", r"\(2, 6, 5, 6\)"], np.full((2, 6, 5, 6), 7.0)),
        (ValueError, ["out", "dtype float32", "float64"], np.full(y.shape, 7.0, dtype=np.float32)),
        (TypeError, ["out", "list"], [[0.0]]),
    ]
    for exc, parts, out in cases:
        _raises(exc, *parts, fn=lambda out=out: nc.conv2d(X, W, out=out))
    ro = sentinel.copy()
    ro.flags.writeable = False
    _raises(ValueError, "out", "read-only", fn=lambda: nc.conv2d(X, W, out=ro))
    # out overlapping an input: the input must come out unchanged
    x = np.random.default_rng(0).standard_normal((1, 6, 6, 6))
    w = np.random.default_rng(1).standard_normal((6, 6, 1, 1))
    before = x.copy()
    _raises(ValueError, "out overlaps input", fn=lambda: nc.conv2d(x, w, out=x))
    np.testing.assert_array_equal(x, before)
    _raises(
        ValueError,
        "out overlaps weight",
        fn=lambda: nc.conv2d(x[:, :, :1, :1], w, out=w.reshape(1, 6, 6, 1)[..., :1, :]),
    )


def test_unsupported_method_error_is_value_error():
    assert issubclass(nc.UnsupportedMethodError, ValueError)


def test_transposed_out_validation_before_any_write():
    assert nc.conv_transpose2d(Y, WT, stride=2).shape == (2, 3, 7, 7)
    bad = np.full((2, 3, 7, 8), 7.0)
    _raises(ValueError, "out", "shape", fn=lambda: nc.conv_transpose2d(Y, WT, stride=2, out=bad))
    assert (bad == 7.0).all()
    x = np.random.default_rng(0).standard_normal((1, 2, 4))
    before = x.copy()
    w = np.ones((2, 1, 1))
    _raises(ValueError, "out overlaps input", fn=lambda: nc.conv_transpose1d(x, w, out=x[:, :1]))
    np.testing.assert_array_equal(x, before)
