#!/usr/bin/env python3
"""Cuts the tensors kt's ggml-order ops are checked against (kt-model/src/deepseek/ggml_f32.rs)
out of a `llamacpp_logits --dump DIR` run of MODEL.gguf, layer 0 of the prompt call (16 tokens:
llamafile's `V p`) and of the first decode call (one token: `ggml_vec_dot_f32`), and layer 1's
router (its f32 weights `blk.1.ffn_gate_inp.weight` copied from the GGUF):

    python3 extract_ggml_ops.py DUMP_DIR MODEL.gguf OUT_DIR

OUT_DIR/<call>_<what>.npy, float32, C order; `call` is `prompt` or `decode`. K rows, scores
and probabilities keep only the visible positions (the rest of ggml's 256-wide rows is masked).
"""
import glob
import os
import sys

import numpy as np


def gguf_f32_tensor(path, wanted):
    """The f32 tensor `wanted` of a GGUF (v2/v3), shape [ne1, ne0]."""
    with open(path, "rb") as f:
        data = f.read()
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    u32 = lambda o: int.from_bytes(data[o:o + 4], "little")
    u64 = lambda o: int.from_bytes(data[o:o + 8], "little")

    def skip(kind, o):
        if kind == 8:
            return o + 8 + u64(o)
        if kind == 9:
            item, n, o = u32(o), u64(o + 4), o + 12
            for _ in range(n):
                o = skip(item, o)
            return o
        return o + sizes[kind]

    n_tensors, n_kv, o = u64(8), u64(16), 24
    alignment = 32
    for _ in range(n_kv):
        key = data[o + 8:o + 8 + u64(o)].decode()
        o += 8 + u64(o)
        if key == "general.alignment":
            alignment = u32(o + 4)
        o = skip(u32(o), o + 4)
    found = None
    for _ in range(n_tensors):
        name = data[o + 8:o + 8 + u64(o)].decode()
        o += 8 + u64(o)
        dims = [u64(o + 4 + 8 * i) for i in range(u32(o))]
        o += 4 + 8 * len(dims)
        kind, offset = u32(o), u64(o + 4)
        o += 12
        if name == wanted:
            assert kind == 0, f"{wanted} is not f32"
            found = (dims, offset)
    start = (o + alignment - 1) // alignment * alignment
    dims, offset = found
    count = int(np.prod(dims))
    at = start + offset
    return np.frombuffer(data[at:at + 4 * count], dtype="<f4").reshape(dims[::-1]).copy()


def main(dump, model, out):
    os.makedirs(out, exist_ok=True)
    np.save(f"{out}/router_weights.npy", gguf_f32_tensor(model, "blk.1.ffn_gate_inp.weight"))

    def load(call, name, size=None, last=False):
        files = sorted(glob.glob(f"{dump}/{call:02d}-*-{name}.npy"))
        files = [f for f in files if f.endswith(f"-{name}.npy")]
        arrays = [np.load(f) for f in files]
        if size is not None:
            arrays = [a for a in arrays if a.size == size]
        return arrays[-1 if last else 0].astype(np.float32)

    for call, label, tokens, visible in [(0, "prompt", 16, 16), (1, "decode", 1, 17)]:
        qcur = load(call, "Qcur-0")  # [1, T, H, rank + rope]
        heads, width = qcur.shape[2], qcur.shape[3]
        keys = load(call, "cache_k_l0_(view)_(permuted)").reshape(-1, width)[:visible]
        kq = load(call, "kq-0").reshape(heads, tokens, -1)[:, :, :visible]
        soft = load(call, "kq_soft_max-0").reshape(heads, tokens, -1)[:, :, :visible]
        kqv = load(call, "kqv-0").reshape(heads, tokens, -1)
        q = load(call, "q-0", size=tokens * heads * 96, last=True).reshape(tokens, heads, 96)
        q_pe = load(call, "q_pe-0").reshape(tokens, heads, -1)
        arrays = {
            "qcur": qcur.reshape(tokens, heads, width),
            "keys": keys,
            "kq": kq,
            "kq_soft_max": soft,
            "kqv": kqv,
            "q_pe_in": q[:, :, 96 - q_pe.shape[2]:],
            "q_pe": q_pe,
            "ffn_gate": load(call, "ffn_gate-0").reshape(tokens, -1),
            "ffn_up": load(call, "ffn_up-0").reshape(tokens, -1),
            "ffn_swiglu": load(call, "ffn_swiglu-0").reshape(tokens, -1),
            "router_in": load(call, "ffn_norm-1", last=True).reshape(tokens, -1),
            "router_logits": load(call, "ffn_moe_logits-1").reshape(tokens, -1),
        }
        for name, a in arrays.items():
            np.save(f"{out}/{label}_{name}.npy", np.ascontiguousarray(a))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
