#!/usr/bin/env python3
"""Summary of scripts/experiments/routing_balance.sh: OUT/summary.md, per load-balancing type the
max / mean rows per expert of each MoE layer (averaged over the last LAST steps of each run), the
mean over layers, the final training loss (mean of the last LAST steps) and the validation loss,
each as the mean over seeds with [min, max].
    routing_balance_report.py OUT
"""
import glob
import json
import os
import sys

out = sys.argv[1]
LAST = 20
TYPES = ["aux_loss", "seq_aux_loss", "global_aux_loss", "none"]
seeds = sorted(int(os.path.basename(d)[4:]) for d in glob.glob(os.path.join(out, "seed*")))


def load(t, s):
    met = [json.loads(line) for line in open(os.path.join(out, "seed%d" % s, t, "metrics.jsonl"))]
    tail = met[-LAST:]
    layers = len(tail[0]["expert_load_max_over_mean"])
    per_layer = [sum(m["expert_load_max_over_mean"][j] for m in tail) / len(tail) for j in range(layers)]
    return dict(layers=per_layer, loss=sum(m["loss"] for m in tail) / len(tail), aux=tail[-1]["aux_loss"],
                valid=[m["valid_loss"] for m in met if "valid_loss" in m][-1], steps=met[-1]["step"],
                step_s=sorted(m["step_s"] for m in met)[len(met) // 2])


def mean(xs):
    return sum(xs) / len(xs)


def ms(xs, f="%.2f"):
    """mean [min, max] over seeds."""
    return f % xs[0] if len(xs) == 1 else (f + " [" + f + ", " + f + "]") % (mean(xs), min(xs), max(xs))


R = {t: [load(t, s) for s in seeds] for t in TYPES}
L = len(R[TYPES[0]][0]["layers"])
lines = ["moe-tiny at d_model 128, %d steps of 2,048 tokens (4 micro-batches of 2 x 256), seeds %s; max / mean rows per expert "
         "per MoE layer, averaged over the last %d steps; each cell the mean over seeds [min, max]." %
         (R[TYPES[0]][0]["steps"], ", ".join(map(str, seeds)), LAST), "",
         "| balancing | " + " | ".join("layer %d" % (j + 1) for j in range(L)) +
         " | mean of layers | train loss (last %d) | validation loss |" % LAST,
         "|---|" + "---|" * (L + 3)]
for t in TYPES:
    r = R[t]
    cells = [ms([x["layers"][j] for x in r]) for j in range(L)]
    lines.append("| %s | %s | %s | %s | %s |" % (t, " | ".join(cells), ms([mean(x["layers"]) for x in r]),
                                               ms([x["loss"] for x in r], "%.3f"), ms([x["valid"] for x in r], "%.3f")))
lines += ["", "Rows per expert are counted over each step's 2,048 tokens. Balanced routing is 1.00; with 8 experts and "
          "top-2 the most is E / K = 4.00, every token sending one of its two copies to the same expert. Median "
          "step time: " +
          ", ".join("%s %.2f s" % (t, mean([x["step_s"] for x in R[t]])) for t in TYPES) + "."]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
