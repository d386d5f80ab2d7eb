"""Baseline for kt's W4A16 GEMM timing (kt-kernels/examples/cuda_w4a16_timing.rs): the same
DeepSeek-V3 shapes as a plain fp16 matmul through PyTorch (cuBLAS),
out[m, n] = x[m, k] @ W[n, k]^T, timed the same two ways: `hot` (5 warm-ups, CUDA events
around 100 back-to-back calls of one shape) and `cold` (the seven shapes in turn, an event
between consecutive calls, 20 rounds after one warm-up round). Also the device-to-device
copy bandwidth, the HBM reference for the GB/s figures. Run on the GPU machine.
`KT_W4A16_TOKENS=1,16` limits the token counts, as for the kt example."""
import os

import torch

SHAPES = [
    ("q_b_proj", 24576, 1536),
    ("kv_b_proj", 32768, 512),
    ("o_proj", 7168, 16384),
    ("shared_gate", 2048, 7168),
    ("shared_down", 7168, 2048),
    ("dense_gate", 18432, 7168),
    ("dense_down", 7168, 18432),
]
TOKENS = (1, 2, 4, 8, 16, 64, 128)
if os.environ.get("KT_W4A16_TOKENS"):
    TOKENS = tuple(int(t) for t in os.environ["KT_W4A16_TOKENS"].split(","))


def line(kind, name, m, n, k, us):
    print(f"TORCH_FP16 {kind} {name} m={m} n={n} k={k} us={us:.2f} "
          f"weight_GB/s={n * k * 2 / (us * 1e3):.0f} TFLOP/s={2 * m * n * k / (us * 1e6):.2f}")


def event():
    e = torch.cuda.Event(enable_timing=True)
    e.record()
    return e


print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
dst = torch.empty_like(src)
for _ in range(3):
    dst.copy_(src)
start = event()
for _ in range(20):
    dst.copy_(src)
end = event()
torch.cuda.synchronize()
# A copy reads and writes every byte.
print(f"TORCH_COPY GB/s={2 * src.numel() * 20 / (start.elapsed_time(end) * 1e6):.0f}")
del src, dst

weights = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _, n, k in SHAPES]
for m in TOKENS:
    xs = [torch.randn(m, k, device="cuda", dtype=torch.float16) for _, _, k in SHAPES]
    for (name, n, k), w, x in zip(SHAPES, weights, xs):
        for _ in range(5):
            torch.nn.functional.linear(x, w)
        iters = 100
        start = event()
        for _ in range(iters):
            torch.nn.functional.linear(x, w)
        end = event()
        torch.cuda.synchronize()
        line("hot", name, m, n, k, start.elapsed_time(end) * 1000.0 / iters)
    rounds = 20
    total = [0.0] * len(SHAPES)
    for r in range(rounds + 1):
        events = []
        for w, x in zip(weights, xs):
            events.append(event())
            torch.nn.functional.linear(x, w)
        events.append(event())
        torch.cuda.synchronize()
        if r == 0:
            continue
        for i in range(len(SHAPES)):
            total[i] += events[i].elapsed_time(events[i + 1]) * 1000.0
    for (name, n, k), t in zip(SHAPES, total):
        line("cold", name, m, n, k, t / rounds)
    print(f"TORCH_FP16 cold layer m={m} us={sum(total) / rounds:.2f}")
