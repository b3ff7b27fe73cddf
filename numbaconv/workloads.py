"""Copied from the project's shared benchmark definitions (do not read ../shared at run time).

Public benchmark workloads for numbaconv (float32 NC... layout unless noted).

Each entry: (name, op, input shape, weight shape, keyword arguments).
op is "conv" or "conv_transpose" (PyTorch semantics), or "signal"
(scipy.signal.convolve semantics, float64; kwargs hold the mode).
Peers to time beside numbaconv in the same process: torch.nn.functional
(CPU, torch.set_num_threads(2)) for conv ops, scipy.signal.convolve
(method="auto") for signal ops, and for 2-D 'same' signal cases also OpenCV
cv2.filter2D (opencv-python-headless; it correlates, so flip the kernel;
borderType=cv2.BORDER_CONSTANT), the fastest 2-D filter a user would reach for.
"""

WORKLOADS = [
    ("resnet_stem_7x7s2", "conv", (1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
    ("resnet_3x3_c64", "conv", (8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ("resnet_1x1_c256", "conv", (8, 256, 56, 56), (64, 256, 1, 1), dict()),
    ("resnet_3x3_c256", "conv", (8, 256, 14, 14), (256, 256, 3, 3), dict(padding=1)),
    ("grouped_3x3_g8", "conv", (8, 64, 56, 56), (64, 8, 3, 3), dict(padding=1, groups=8)),
    ("mobilenet_dw_7x7_c96", "conv", (8, 96, 56, 56), (96, 1, 7, 7), dict(padding=3, groups=96)),
    ("mobilenet_stem_3x3s2", "conv", (8, 3, 224, 224), (32, 3, 3, 3), dict(stride=2, padding=1)),
    ("conv1d_k5_c128", "conv", (8, 128, 2048), (128, 128, 5), dict(padding=2)),
    ("depthwise_3x3_c32", "conv", (8, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32)),
    ("large_kernel_31x31", "conv", (1, 8, 256, 256), (8, 8, 31, 31), dict(padding=15)),
    ("conv1d_fir_1025", "conv", (4, 1, 65536), (1, 1, 1025), dict(padding="same")),
    ("conv3d_3x3x3_c16", "conv", (2, 16, 32, 64, 64), (32, 16, 3, 3, 3), dict(padding=1)),
    ("dcgan_up_4x4s2_c128", "conv_transpose", (8, 128, 32, 32), (128, 64, 4, 4), dict(stride=2, padding=1)),
    ("unet_up_2x2s2", "conv_transpose", (8, 64, 64, 64), (64, 32, 2, 2), dict(stride=2)),
    (
        "tconv_3x3s2_c128",
        "conv_transpose",
        (8, 128, 28, 28),
        (128, 64, 3, 3),
        dict(stride=2, padding=1, output_padding=1),
    ),
    ("signal2d_5x5_same", "signal", (2048, 2048), (5, 5), dict(mode="same")),
    ("signal2d_65x65_same", "signal", (1024, 1024), (65, 65), dict(mode="same")),
    ("signal1d_fir_full", "signal", (1_000_000,), (511,), dict(mode="full")),
]
