"""Baseline for kt's W4A16 GEMM timing (kt-kernels/examples/cuda_w4a16_timing.rs): the same
shapes as a plain fp16 matmul through PyTorch (cuBLAS), out[m, n] = x[m, k] @ W[n, k]^T,
timed the same way (5 warm-ups, mean of 50 with CUDA events). Run on the GPU machine."""
import torch

SHAPES = [(4096, 7168), (7168, 2048), (7168, 7168), (2816, 2048), (2048, 1408)]
print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
for n, k in SHAPES:
    w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
    for m in (1, 16, 64, 128):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        for _ in range(5):
            y = torch.nn.functional.linear(x, w)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        iters = 50
        start.record()
        for _ in range(iters):
            y = torch.nn.functional.linear(x, w)
        end.record()
        torch.cuda.synchronize()
        us = start.elapsed_time(end) * 1000.0 / iters
        print(f"TORCH_FP16 m={m} n={n} k={k} us={us:.2f} weight_GB/s={n * k * 2 / (us * 1e3):.0f} "
              f"TFLOP/s={2 * m * n * k / (us * 1e6):.2f}")
