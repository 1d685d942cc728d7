#!/usr/bin/env python3
"""The markdown tables of docs/performance.md's issue-7 section from the files that
bench/cpu_speed_figures.sh writes.   Usage: bench/cpu_speed_tables.py OUT_DIR"""
import json
import os
import re
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "runs/cpu-speed"


def read(name):
    with open(os.path.join(out, name)) as f:
        return f.read()


def bench(name):
    """tokens/s, MFU %, peak GiB, peer tokens/s, peer peak GiB, ratio, profile {component: (fwd, bwd, share)}."""
    t = read(name)
    r = re.search(r"^result: ([0-9.]+) tokens/s \| MFU ([0-9.]+)% \| step ([0-9.]+) s.*peak memory ([0-9.]+) GiB", t, re.M)
    c = re.search(r"^compare: .*PyTorch [0-9.]+ ([0-9.]+) tokens/s \(.*peak ([0-9.]+) GiB\), ratio ([0-9.]+)x", t, re.M)
    prof = {}
    for m in re.finditer(r"^  (\S.*?)\s{2,}([0-9.]+)?\s+([0-9.]+)\s+([0-9.]+)%$", t, re.M):
        prof[m.group(1).strip()] = (m.group(2), m.group(3), m.group(4))
    return dict(tps=float(r.group(1)), mfu=float(r.group(2)), step=float(r.group(3)), peak=float(r.group(4)),
                peer=float(c.group(1)), peer_peak=float(c.group(2)), ratio=float(c.group(3)), prof=prof)


print("### end to end\n")
print("| config | precision | fivefold tokens/s | MFU | PyTorch 1.13 tokens/s | ratio | peak memory fivefold / PyTorch |")
print("|---|---|---|---|---|---|---|")
names = {"moe": "moe-small (MoE, 153M params, 49M active), seq 512 x 8",
         "dense": "dense of equal active parameters (`llama-small`, ffn 2816, 49M), seq 512 x 8",
         "seq2048": "moe-small, seq 2048 x 2 (same tokens per step)"}
runs = {}
for cfg, label in names.items():
    for p in ("fp32", "bf16"):
        b = runs[(cfg, p)] = bench(f"{cfg}_{p}.txt")
        peer = f"{b['peer']:.0f}" + (" (autocast)" if p == "bf16" else "")
        print(f"| {label if p == 'fp32' else ''} | {p} | {b['tps']:.0f} | {b['mfu']:.0f}% | {peer} | {b['ratio']:.2f}x | "
              f"{b['peak']:.2f} / {b['peer_peak']:.2f} GiB |")

print("\n### profile (moe-small), seconds per step: forward + backward, share\n")
print("| component | bf16 | share | fp32 | share |\n|---|---|---|---|---|")
b16, b32 = runs[("moe", "bf16")]["prof"], runs[("moe", "fp32")]["prof"]
for k in b16:
    f = lambda v: (f"{float(v[0]):.2f} + {float(v[1]):.2f}" if v[0] else f"{float(v[1]):.2f}")
    print(f"| {k} | {f(b16[k])} | {b16[k][2]}% | {f(b32[k])} | {b32[k][2]}% |")
print(f"| step | {runs[('moe', 'bf16')]['step']:.2f} | | {runs[('moe', 'fp32')]['step']:.2f} | |")

print("\n### ceilings\n")
print(read("ceiling.txt"))
k = read("kernels.txt")
for key in ("ceiling_fp32_tflops", "ceiling_bf16_tflops", "triad_gbps"):
    m = re.search(key + r": ([0-9.]+)", k)
    print(key, m.group(1) if m else "?")
print("\n### kernels\n")
for line in k.splitlines():
    if not line.startswith("BM_"):
        continue
    name = line.split()[0].replace("/iterations:5/real_time", "")
    time = " ".join(line.split()[1:3])
    rate = re.search(r"(TFLOP/s|GB/s)=([0-9.]+)", line)
    of = re.search(r"of_(ceiling|bandwidth)=([0-9.]+)", line)
    print(f"{name:56s} {time:10s} {rate.group(1)} {float(rate.group(2)):.3f} ({float(of.group(2)):.2f})")

print("\n### training curves\n")
t = read("track.txt")
print(t[t.index("      steps"):] if "      steps" in t else t[-2000:])


def losses(path):
    with open(os.path.join(out, path)) as f:
        return [json.loads(line) for line in f if line.strip()]


a, s = losses("track/fp32/metrics.jsonl"), losses("track/fp32-seed1235/metrics.jsonl")
w, worst = 25, 0.0
for i in range(0, min(len(a), len(s)), w):
    worst = max(worst, abs(sum(r["loss"] for r in a[i:i + w]) / w - sum(r["loss"] for r in s[i:i + w]) / w))
va = [r["valid_loss"] for r in a if "valid_loss" in r]
vs = [r["valid_loss"] for r in s if "valid_loss" in r]
print(f"seed 1235 against seed 1234 (fp32): largest 25-step mean difference {worst:.4f} nats; "
      f"validation {' / '.join(f'{v:.3f}' for v in vs)} against {' / '.join(f'{v:.3f}' for v in va)}")
