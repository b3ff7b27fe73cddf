"""CPU kernels, one module per algorithm (each exposes ``run(x5, w5, bias, plan, out5)``)."""
