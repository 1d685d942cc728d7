"""The PyTorch peer of `fivefold bench`: times training steps (forward, backward, AdamW) of the
same model (bench/torch_model.py) on random tokens, at its best settings on this machine.

Usage: torch_peer.py CONFIG.json [--steps N] [--warmup N] [--threads T] [--bf16]
CONFIG.json is a resolved fivefold run config (`fivefold train --print_config ... > cfg.json`).
The config decides the model (layer pattern: dense `*-` when num_experts is 0, MoE `*E`, or an
explicit model.layer_pattern, Mamba2 'M' layers included as in the nemotron-h presets; widths,
heads, seq_len, ...), the micro-batch, the micro-batches per step (train.grad_accum) and the AdamW
settings.
`fivefold bench --peer` runs it for you, in the same session as its own measurement, with
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 so glibc keeps
large blocks (worth 10-45% to PyTorch here) and OMP_NUM_THREADS=T.

Prints one line per timed step, then
  result: X tokens/s | peak memory Y GiB | PyTorch V, fp32|bf16 autocast, T threads, step Z s
(peak memory: the largest resident set of this process).
"""
import argparse
import json
import os
import resource
import statistics
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
if args.steps < 1 or args.warmup < 0 or args.threads < 1:
    sys.exit("torch_peer: --steps must be >= 1, --warmup >= 0 and --threads >= 1")


def peak_rss_bytes():
    """The largest resident set of this process. VmHWM is this process image's own high-water mark;
    ru_maxrss (the fallback off Linux) carries over through exec() the peak of a parent that
    fork()ed this process, so it can report the launcher's memory instead of PyTorch's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)
cfg = json.load(open(args.config))
m, t, o = cfg["model"], cfg["train"], cfg.get("optim", {})
pattern = torch_model.pattern_of(m)
bad = sorted(set(pattern) - set("*-EM"))
if bad:
    sys.exit("torch_peer: model.layer_pattern %r has layers the peer does not implement: %s (it has '*' attention, "
             "'-' MLP, 'E' MoE and 'M' Mamba2)" % (pattern, ", ".join(repr(c) for c in bad)))
if "E" in pattern and m["num_experts"] < 1:
    sys.exit("torch_peer: model.layer_pattern %r has MoE layers but model.num_experts is %d" % (pattern, m["num_experts"]))
torch.manual_seed(t["seed"])
model = torch_model.DecoderLM(m)
for name, p in model.named_fivefold_parameters():
    if p.dim() == 2 and ".conv1d_" not in name:  # the Mamba2 convs keep their own (Conv1d-like) init
        torch.nn.init.normal_(p, std=m["init_std"])
opt = torch.optim.AdamW(model.parameters(), lr=o.get("lr", 1e-4), betas=(o.get("beta1", 0.9), o.get("beta2", 0.95)),
                        eps=o.get("adam_eps", 1e-8), weight_decay=o.get("weight_decay", 0.1))
clip = o.get("grad_clip", 1.0)
B, S, V, M = t["micro_batch"], m["seq_len"], m["vocab_size"], t["grad_accum"]
tokens = torch.randint(0, V, (M, B, S))
targets = torch.randint(0, V, (M, B, S))
precision = "bf16 autocast" if args.bf16 else "fp32"
print("torch_peer: %s | %.2fM params | %d x %d x %d tokens per step | %d threads | %s"
      % (pattern, sum(p.numel() for p in model.parameters()) / 1e6, M, B, S, args.threads, precision))


def step():
    opt.zero_grad(set_to_none=True)
    for i in range(M):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, aux = model(tokens[i], targets[i])
        ((loss + aux) / M).backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def timed_step():
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


# Warm-up: the given steps, then more until the step time has settled (the last three within 5%
# of each other: PyTorch's allocator and oneDNN's primitive caches fill over the first steps), at
# most 20 more.
warm = [timed_step() for _ in range(args.warmup)]
while len(warm) < args.warmup + 20 and (len(warm) < 3 or max(warm[-3:]) > 1.05 * min(warm[-3:])):
    warm.append(timed_step())
print("  warm-up: %d steps, the last %s s" % (len(warm), ", ".join("%.3f" % t for t in warm[-3:])))
times = []
for i in range(args.steps):
    times.append(timed_step())
    print("  step %d: %.3f s" % (i + 1, times[-1]))
median = statistics.median(times)
print("result: %.1f tokens/s | peak memory %.2f GiB | PyTorch %s, %s, %d threads, step %.3f s (median of %d)"
      % (M * B * S / median, peak_rss_bytes() / 2**30, torch.__version__, precision, args.threads, median, len(times)))
