#!/usr/bin/env python3
"""Distances of llamacpp_logits outputs to the shared fixtures' llama.cpp logits.

    python3 kt-bench/peers/llamacpp_logits/compare.py FIXTURES_DIR RUN_DIR [SUFFIX]

RUN_DIR holds <model>_<q>_<SUFFIX>.npy as run_fixtures.sh writes them (SUFFIX "on" by default:
repack on, flash attention off, the fixtures' configuration). For each file: total relative L2
over the 24 rows, the worst row's, and how many rows have the fixture's argmax (docs/parity.md's
three figures)."""
import sys
import numpy as np

fixtures, run = sys.argv[1], sys.argv[2]
suffix = sys.argv[3] if len(sys.argv) > 3 else "on"
for model, qs in (("tiny-dsv2", ("bf16", "q4_k_m")), ("tiny-dsv3", ("bf16", "q4_k_m", "q5_k_m", "q2_k"))):
    for q in qs:
        ref = np.load(f"{fixtures}/{model}/llamacpp_{q}_logits.npy").astype(np.float64)
        got = np.load(f"{run}/{model}_{q}_{suffix}.npy").astype(np.float64).reshape(ref.shape)
        total = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        rows = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        same = int((got.argmax(-1) == ref.argmax(-1)).sum())
        print(f"{model} {q}: {total:.1e} / {rows.max():.1e} / {same}/{len(rows)}")
