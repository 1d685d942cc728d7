"""The PyTorch peer of `fivefold bench`: times training steps (forward, backward, AdamW) of the
same model (bench/torch_model.py) on random tokens, at its best settings on this machine.

Usage: torch_peer.py CONFIG.json [--steps N] [--warmup N] [--threads T] [--bf16]
CONFIG.json is a resolved fivefold run config (`fivefold train --print_config ... > cfg.json`).
Run it with GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 so
glibc keeps large blocks (worth 10-45% to PyTorch here); bench/compare_pytorch.sh does.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("config")
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--warmup", type=int, default=1)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
args = ap.parse_args()

torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)
cfg = json.load(open(args.config))
m, t = cfg["model"], cfg["train"]
torch.manual_seed(t["seed"])
model = torch_model.DecoderLM(m)
for name, p in model.named_fivefold_parameters():
    if p.dim() == 2:
        torch.nn.init.normal_(p, std=m["init_std"])
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
B, S, V, M = t["micro_batch"], m["seq_len"], m["vocab_size"], t["grad_accum"]
tokens = torch.randint(0, V, (M, B, S))
targets = torch.randint(0, V, (M, B, S))


def step():
    opt.zero_grad(set_to_none=True)
    for i in range(M):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, aux = model(tokens[i], targets[i])
        ((loss + aux) / M).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


for _ in range(args.warmup):
    step()
times = []
for i in range(args.steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
    print("  step %d: %.3f s" % (i + 1, times[-1]))
mean = sum(times) / len(times)
print("result: %.1f tokens/s (PyTorch %s, %s, %d threads, step %.3f s)"
      % (M * B * S / mean, torch.__version__, "bf16 autocast" if args.bf16 else "fp32", args.threads, mean))
