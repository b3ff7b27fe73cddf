"""Direct convolution on the GPU (``method="direct"``, device cuda).

A block computes a tile of ``config.cuda_block_2d`` = (16, 8) output pixels
(W x H) of one output plane (sample, output channel, depth); every thread
owns one output element. Per input channel and depth tap, the block stages
the input region its tile reads (through the tap maps, zeros for padding)
and the channel's KH x KW weights in shared memory, and each thread sums its
taps from there (each input value is read once from global memory per block
instead of once per tap). When that region does not fit
``config.cuda_shared_bytes`` (large strides or dilations), a second kernel
stages only the weights, in chunks of ``config.cuda_chunk`` values. Both
kernels skip taps that have no input (the tiled one stages a flag per region
position), as the CPU kernels do, so a NaN weight never meets a missing
position; conv's zero padding gets NaN where PyTorch's would afterwards
(:func:`numbaconv.common.nonfinite_padding_mask`). Inputs
are read through the same compact tap maps as the CPU paths
(``shapes.conv_tap_map``: padding modes are index arithmetic, -1 is zero
padding). Planes beyond the grid's y limit are walked by a grid-stride loop.

The same kernel runs the transposed op's gather (:mod:`.gather`) with the
gather maps and the weight rearranged to ``(C_out, C_in/groups, taps)``.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .. import config
from ..common import gpu_roofline, nonfinite_padding_mask
from ._common import MAX_GRID_Y, any_nonfinite, bias_or_zeros, conv_maps, numba_type, set_nan


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
        w_shared = cuda.shared.array(chunk, nbt)
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
                        w_shared[j] = w2[o, s0 + j]
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
                            acc += w_shared[j2] * x[n, c0 + cl, i0, i1, i2]
                cuda.syncthreads()
                s0 += chunk
            if valid:
                out[n, o, od, oh, ow] = acc + bias[o]
            p += cuda.gridDim.y

    return kernel


@functools.cache
def gather_conv_tiled_kernel(dtype_str: str, bx: int, by: int):
    """The input-tiled kernel (module doc): per (input channel, kd) the tile's
    input region, a has-input flag per position and the weights in shared memory."""
    nbt = numba_type(dtype_str)

    @cuda.jit
    def kernel(x, w2, bias, out, fd, fh, fw, geo, groups, KD, KH, KW, LH, LW):
        sm = cuda.shared.array(0, nbt)
        N = x.shape[0]
        O, OD, OH, OW = out.shape[1], out.shape[2], out.shape[3], out.shape[4]
        taps = KD * KH * KW
        Cg = w2.shape[1] // taps
        Og = O // groups
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * bx + tx
        nthreads = bx * by
        tiles_w = (OW + bx - 1) // bx
        ow0 = (cuda.blockIdx.x % tiles_w) * bx
        oh0 = (cuda.blockIdx.x // tiles_w) * by
        ow = ow0 + tx
        oh = oh0 + ty
        valid = ow < OW and oh < OH
        bh = geo[4]
        bw = geo[7]
        # the tile's first padded position per dim (tap steps may be negative)
        ph0 = oh0 * geo[3] + geo[5] + (bh * (KH - 1) if bh < 0 else 0)
        pw0 = ow0 * geo[6] + geo[8] + (bw * (KW - 1) if bw < 0 else 0)
        nh = fh.shape[0]
        nw = fw.shape[0]
        region = LH * LW
        flags = region + KH * KW  # then LH x LW flags: 1 where the position has an input
        planes = N * O * OD
        p = cuda.blockIdx.y
        while p < planes:
            od = p % OD
            r0 = p // OD
            o = r0 % O
            n = r0 // O
            c0 = (o // Og) * Cg
            acc = nbt(0)
            for cl in range(Cg):
                for kd in range(KD):
                    i0 = fd[od * geo[0] + kd * geo[1] + geo[2]]
                    if i0 < 0:  # the same for the whole block: no thread waits alone
                        continue
                    j = tid
                    while j < region:
                        r = j // LW
                        ph = ph0 + r
                        pw = pw0 + j - r * LW
                        v = nbt(0)
                        here = nbt(0)
                        if ph >= 0 and ph < nh and pw >= 0 and pw < nw:
                            ih = fh[ph]
                            iw = fw[pw]
                            if ih >= 0 and iw >= 0:
                                v = x[n, c0 + cl, i0, ih, iw]
                                here = nbt(1)
                        sm[j] = v
                        sm[flags + j] = here  # a tap with no input is skipped, not multiplied
                        j += nthreads
                    j = tid
                    while j < KH * KW:
                        sm[region + j] = w2[o, (cl * KD + kd) * KH * KW + j]
                        j += nthreads
                    cuda.syncthreads()
                    if valid:
                        for kh in range(KH):
                            rh = oh * geo[3] + kh * bh + geo[5] - ph0
                            for kw in range(KW):
                                rw = ow * geo[6] + kw * bw + geo[8] - pw0
                                if sm[flags + rh * LW + rw] != 0:
                                    acc += sm[region + kh * KW + kw] * sm[rh * LW + rw]
                    cuda.syncthreads()
            if valid:
                out[n, o, od, oh, ow] = acc + bias[o]
            p += cuda.gridDim.y

    return kernel


def launch_gather_conv(x5, w2, bias, out5, maps, groups, kernel_shape):
    """Run the gather-conv over every element of ``out5``: the input-tiled
    kernel when the tile's input region and weights fit
    ``config.cuda_shared_bytes`` of shared memory (``maps.geo`` sizes the
    region), else the weight-staging kernel."""
    bx, by = (int(v) for v in config.cuda_block_2d)
    n, o, od, oh, ow = out5.shape
    tiles = -(-ow // bx) * -(-oh // by)
    grid = (tiles, max(1, min(n * o * od, MAX_GRID_Y)))
    fd, fh, fw, geo = maps
    kd, kh, kw = kernel_shape
    g = maps.geo
    lh = (by - 1) * g[3] + (kh - 1) * abs(g[4]) + 1
    lw = (bx - 1) * g[6] + (kw - 1) * abs(g[7]) + 1
    nbytes = (2 * lh * lw + kh * kw) * np.dtype(out5.dtype).itemsize  # values, weights, flags
    if nbytes <= int(config.cuda_shared_bytes):
        k = gather_conv_tiled_kernel(np.dtype(out5.dtype).str, bx, by)
        k[grid, (bx, by), 0, nbytes](x5, w2, bias, out5, fd, fh, fw, geo, groups, kd, kh, kw, lh, lw)
        return
    k = gather_conv_kernel(np.dtype(out5.dtype).str, int(config.cuda_chunk), bx, by)
    k[grid, (bx, by)](x5, w2, bias, out5, fd, fh, fw, geo, groups, kd, kh, kw)


def supports(plan) -> str | None:
    """The direct kernel runs every case."""
    return None


def workspace_bytes(plan) -> int:
    """No workspace: the kernel reads through the tap maps."""
    return 0


def cost_features(plan) -> dict[str, float]:
    return gpu_roofline("direct", plan)


def run(x5, w5, bias, plan, out5):
    """Direct convolution of device arrays in the canonical 5-D form."""
    w2 = w5.reshape(plan.c_out, w5.size // plan.c_out)
    launch_gather_conv(x5, w2, bias_or_zeros(bias, plan), out5, conv_maps(plan), plan.groups, plan.kernel)
    padded = plan.padding_mode == "zeros" and any(lo or hi for lo, hi in plan.padding)
    if padded and any_nonfinite(w5):  # the weights come to the host only then
        set_nan(out5, nonfinite_padding_mask(plan, w5.copy_to_host()))
    return out5
