#!/usr/bin/env python3
"""bf16 against fp32 training: the same run (config, seed, data order) in both precisions, and how
far apart their loss curves stay.

Usage: bench/track_precision.py [--steps N] [--threads T] [--out DIR] [-- extra fivefold train flags]

It runs `fivefold train` twice (default config unless flags say otherwise), reads the two
metrics.jsonl files and prints, per window of steps, the mean training loss of each and their
difference, then every validation loss of each. The summary line gives the largest windowed
difference and the final validation losses."""
import argparse
import json
import os
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--window", type=int, default=25, help="steps per averaged window")
ap.add_argument("--out", default="runs/track-precision")
ap.add_argument("--binary", default="build/fivefold")
ap.add_argument("extra", nargs="*", help="more fivefold train flags (after --)")
a = ap.parse_args()

runs = {}
for precision in ("fp32", "bf16"):
    out = os.path.join(a.out, precision)
    cmd = [a.binary, "train", "--steps", str(a.steps), "--precision", precision, "--out_dir", out,
           "--log_interval", "50"] + a.extra
    print("==", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    if subprocess.run(cmd, env=env).returncode != 0:
        sys.exit(f"error: the {precision} run failed: {' '.join(cmd)}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        runs[precision] = [json.loads(line) for line in f if line.strip()]

f32, b16 = runs["fp32"], runs["bf16"]
n = min(len(f32), len(b16))
print(f"\n{'steps':>11} {'fp32 loss':>10} {'bf16 loss':>10} {'bf16 - fp32':>12}")
worst = 0.0
for w0 in range(0, n, a.window):
    w1 = min(n, w0 + a.window)
    m32 = sum(r["loss"] for r in f32[w0:w1]) / (w1 - w0)
    m16 = sum(r["loss"] for r in b16[w0:w1]) / (w1 - w0)
    worst = max(worst, abs(m16 - m32))
    print(f"{w0 + 1:>5}-{w1:<5} {m32:>10.4f} {m16:>10.4f} {m16 - m32:>+12.4f}")
v32 = [(r["step"], r["valid_loss"]) for r in f32 if "valid_loss" in r]
v16 = {r["step"]: r["valid_loss"] for r in b16 if "valid_loss" in r}
print(f"\n{'step':>5} {'fp32 valid':>11} {'bf16 valid':>11} {'bf16 - fp32':>12}")
for step, v in v32:
    if step in v16:
        print(f"{step:>5} {v:>11.4f} {v16[step]:>11.4f} {v16[step] - v:>+12.4f}")
last = v32[-1][0] if v32 else None
print(f"\nsummary: {n} steps; largest difference of {a.window}-step mean training losses {worst:.4f} nats; "
      f"final validation loss fp32 {v32[-1][1]:.4f}, bf16 {v16.get(last, float('nan')):.4f}")
