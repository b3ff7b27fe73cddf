"""Direct convolution on the GPU (``method="direct"``, device cuda).

A block computes a tile of ``config.cuda_block_2d`` = (16, 8) output pixels
(W x H) of one output plane (sample, output channel, depth); every thread
owns one output element. The output channel's weights (``C_in/groups x
taps``) are staged through shared memory in chunks of ``config.cuda_chunk``
values, each read once from global memory per block and then by all its
threads. Inputs are read through the same compact tap maps as the CPU paths
(``shapes.conv_tap_map``: padding modes are index arithmetic, -1 is zero
padding). Planes beyond the grid's y limit are walked by a grid-stride loop.

The same kernel runs the transposed op's gather (:mod:`.transpose`) with the
gather maps and the weight rearranged to ``(C_out, C_in/groups, taps)``.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .. import config
from ._common import MAX_GRID_Y, bias_or_zeros, conv_maps, numba_type


@functools.cache
def gather_conv_kernel(dtype_str: str, chunk: int, bx: int, by: int):
    """The kernel for one dtype and block shape (shared arrays need both at compile time)."""
    nbt = numba_type(dtype_str)

    @cuda.jit
    def kernel(x, w2, bias, out, fd, fh, fw, geo, groups, KD, KH, KW):
        # out[n, o, od, oh, ow] = bias[o] + sum_{cl, kd, kh, kw} w2[o, cl*taps + tap]
        #     * x[n, g*Cg + cl, fd[od*a0 + kd*b0 + c0], fh[...], fw[...]]  (-1: zero)
        N = x.shape[0]
        O, OD, OH, OW = out.shape[1], out.shape[2], out.shape[3], out.shape[4]
        total_w = w2.shape[1]
        taps = KD * KH * KW
        Cg = total_w // taps
        Og = O // groups
        sw = cuda.shared.array(chunk, nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * bx + tx
        tiles_w = (OW + bx - 1) // bx
        ow = (cuda.blockIdx.x % tiles_w) * bx + tx
        oh = (cuda.blockIdx.x // tiles_w) * by + ty
        valid = ow < OW and oh < OH
        planes = N * O * OD
        p = cuda.blockIdx.y
        while p < planes:
            od = p % OD
            r = p // OD
            o = r % O
            n = r // O
            c0 = (o // Og) * Cg
            acc = nbt(0)
            s0 = 0
            while s0 < total_w:
                j = tid
                while j < chunk:
                    if s0 + j < total_w:
                        sw[j] = w2[o, s0 + j]
                    j += bx * by
                cuda.syncthreads()
                if valid:
                    m = total_w - s0 if total_w - s0 < chunk else chunk
                    for j2 in range(m):
                        idx = s0 + j2
                        cl = idx // taps
                        t = idx - cl * taps
                        kd = t // (KH * KW)
                        t2 = t - kd * (KH * KW)
                        kh = t2 // KW
                        kw = t2 - kh * KW
                        i0 = fd[od * geo[0] + kd * geo[1] + geo[2]]
                        i1 = fh[oh * geo[3] + kh * geo[4] + geo[5]]
                        i2 = fw[ow * geo[6] + kw * geo[7] + geo[8]]
                        if i0 >= 0 and i1 >= 0 and i2 >= 0:
                            acc += sw[j2] * x[n, c0 + cl, i0, i1, i2]
                cuda.syncthreads()
                s0 += chunk
            if valid:
                out[n, o, od, oh, ow] = acc + bias[o]
            p += cuda.gridDim.y

    return kernel


def launch_gather_conv(x5, w2, bias, out5, maps, groups, kernel_shape):
    """Run :func:`gather_conv_kernel` over every element of ``out5``."""
    bx, by = (int(v) for v in config.cuda_block_2d)
    chunk = int(config.cuda_chunk)
    k = gather_conv_kernel(np.dtype(out5.dtype).str, chunk, bx, by)
    n, o, od, oh, ow = out5.shape
    tiles = -(-ow // bx) * -(-oh // by)
    grid = (tiles, max(1, min(n * o * od, MAX_GRID_Y)))
    fd, fh, fw, geo = maps
    k[grid, (bx, by)](x5, w2, bias, out5, fd, fh, fw, geo, groups, *kernel_shape)


def supports(plan) -> str | None:
    return None


def run(x5, w5, bias, plan, out5):
    """Direct convolution of device arrays in the canonical 5-D form."""
    w2 = w5.reshape(plan.c_out, w5.size // plan.c_out)
    launch_gather_conv(x5, w2, bias_or_zeros(bias, plan), out5, conv_maps(plan), plan.groups, plan.kernel)
    return out5
