"""Baseline for kt's MLA decode timing (kt-kernels/examples/cuda_mla_timing.rs): the same
latent-space attention in PyTorch, out = softmax(scale * q @ cache^T) @ cache[..., :512],
as two batched matmuls and a softmax over a dense (unpaged) bf16 cache, on the same shapes,
timed the same way (5 warm-ups, mean of 20 with CUDA events). Also checks that it agrees
with an f32 evaluation. Run on the GPU machine."""
import torch

HEADS, LAT, DIM = 128, 512, 576
SCALE = 0.1352
CASES = [(64, 4096), (1, 4096), (8, 4096), (32, 4096), (64, 1024), (16, 16384)]


def attend(q, cache):
    # q [B, H, 576], cache [B, L, 576]; f32 softmax as the kt kernel's
    s = torch.bmm(q, cache.transpose(1, 2)).float() * SCALE
    p = torch.softmax(s, dim=-1).to(q.dtype)
    return torch.bmm(p, cache[:, :, :LAT])


print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
for batch, kv in CASES:
    q = (torch.randn(batch, HEADS, DIM, device="cuda") * 0.5).to(torch.bfloat16)
    cache = torch.randn(batch, kv, DIM, device="cuda").to(torch.bfloat16)
    for _ in range(5):
        out = attend(q, cache)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters = 20
    start.record()
    for _ in range(iters):
        out = attend(q, cache)
    end.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(end) * 1000.0 / iters
    ref = torch.softmax(torch.bmm(q.float(), cache.float().transpose(1, 2)) * SCALE, -1) @ cache.float()[:, :, :LAT]
    err = (out.float() - ref).abs().max().item()
    flops = 2.0 * batch * HEADS * kv * (DIM + LAT)
    print(f"TORCH_MLA q_len=1 batch={batch} kv={kv} heads={HEADS} us={us:.1f} "
          f"cache_GB/s={batch * kv * DIM * 2 / (us * 1e3):.0f} TFLOP/s={flops / (us * 1e6):.1f} max_err_vs_f32={err:.2e}")
    del q, cache, out, ref
    torch.cuda.empty_cache()
