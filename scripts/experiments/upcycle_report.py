#!/usr/bin/env python3
"""Summary and figures of scripts/experiments/upcycle.sh: OUT/summary.md (per-variant step-0 and
final validation loss, tokens/s, dropped fraction, paired differences over seeds with min-max) and
FIG_DIR/upcycle_loss.svg, FIG_DIR/upcycle_capacity.svg.
    upcycle_report.py OUT "SEEDS" FIG_DIR
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402

out, seeds, fig_dir = sys.argv[1], sys.argv[2].split(), sys.argv[3]
VARIANTS = [
    ("dense_continue", "dense continue"),
    ("e8k2_g1_softmax_topk", "E8K2 G1, softmax then top-k"),
    ("e8k2_g1_topk_softmax", "E8K2 G1, top-k then softmax"),
    ("e16k4_g4_softmax_topk", "E16K4 G4 VG+scale, softmax then top-k"),
    ("e16k4_g4_topk_softmax", "E16K4 G4 VG+scale, top-k then softmax"),
    ("e16k4_g4_naive", "E16K4 G4 naive, softmax then top-k"),
]
CFS = [("_cf1", "CF 1"), ("_cf1.25", "CF 1.25"), ("_cf2", "CF 2"), ("", "dropless")]


def load(name, s):
    d = os.path.join(out, "seed%s" % s, name)
    log = open(d + ".log").read()
    v0 = float(re.search(r"validation loss before training ([0-9.]+)", log).group(1))
    met = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
    ev = [(0, v0)] + [(m["step"], m["valid_loss"]) for m in met if "valid_loss" in m]
    late = [m for m in met if m["step"] > 10]  # skip the first steps (start-up, first GEMMs)
    t = sorted(m["tokens_per_s"] for m in late)
    tps = t[len(t) // 2]  # median: robust to bursts of load from other processes on the machine
    drop = sum(m["dropped_fraction"] for m in met) / len(met)
    params = re.search(r"([0-9.]+M) parameters \(([0-9.]+M) active", log)
    return dict(v0=v0, ev=ev, final=ev[-1][1], tps=tps, drop=drop, met=met,
                params=params.groups() if params else ("?", "?"))


def mean(xs):
    return sum(xs) / len(xs)


def ms(xs, f="%.4f"):
    """mean [min, max] over seeds."""
    if len(xs) == 1:
        return f % xs[0]
    return (f + " [" + f + ", " + f + "]") % (mean(xs), min(xs), max(xs))


R = {v: [load(v, s) for s in seeds] for v, _ in VARIANTS}
lines = ["Seeds %s; every value is the mean over seeds, [min, max] beside it." % ", ".join(seeds), ""]
lines += ["| variant | parameters (active) | step-0 valid loss | final valid loss | final - dense continue | tokens/s (median step) |",
          "|---|---|---|---|---|---|"]
dense = R["dense_continue"]
for v, label in VARIANTS:
    r = R[v]
    diff = [a["final"] - b["final"] for a, b in zip(r, dense)]
    lines.append("| %s | %s (%s) | %s | %s | %s | %s |" % (
        label, r[0]["params"][0], r[0]["params"][1], ms([x["v0"] for x in r]), ms([x["final"] for x in r]),
        "-" if v == "dense_continue" else ms(diff, "%+.4f"), ms([x["tps"] for x in r], "%.0f")))
lines += ["", "Paired differences of the final validation loss (same seed: same data order and router init):", ""]
for a, b, what in [("e8k2_g1_softmax_topk", "e8k2_g1_topk_softmax", "E8K2 G1: softmax-then-top-k minus top-k-then-softmax"),
                   ("e16k4_g4_softmax_topk", "e16k4_g4_topk_softmax", "E16K4 G4: softmax-then-top-k minus top-k-then-softmax"),
                   ("e16k4_g4_naive", "e16k4_g4_softmax_topk", "E16K4 G4 softmax-then-top-k: naive minus VG+scale"),
                   ("e16k4_g4_softmax_topk", "e8k2_g1_softmax_topk", "softmax-then-top-k: E16K4 G4 minus E8K2 G1")]:
    d = [x["final"] - y["final"] for x, y in zip(R[a], R[b])]
    d0 = [x["v0"] - y["v0"] for x, y in zip(R[a], R[b])]
    lines.append("- %s: final %s (step 0: %s)" % (what, ms(d, "%+.4f"), ms(d0, "%+.4f")))

# Capacity factors (E8K2 G1 softmax then top-k).
C = {}
for suf, label in CFS:
    try:
        C[suf] = [load("e8k2_g1_softmax_topk" + suf, s) for s in seeds]
    except (OSError, AttributeError):
        pass
if C:
    lines += ["", "Capacity factor, E8K2 G1 softmax then top-k (dropped fraction: mean over all steps):", "",
              "| capacity factor | dropped fraction | final valid loss | minus dropless | tokens/s (median step) |", "|---|---|---|---|---|"]
    base = C.get("")
    for suf, label in CFS:
        if suf not in C:
            continue
        r = C[suf]
        diff = "-" if suf == "" or base is None else ms([a["final"] - b["final"] for a, b in zip(r, base)], "%+.4f")
        lines.append("| %s | %s | %s | %s | %s |" % (label, ms([x["drop"] for x in r]), ms([x["final"] for x in r]), diff,
                                                     ms([x["tps"] for x in r], "%.0f")))

# Offline upcycling + eval (seed-1 router) against the online step-0 loss.
off = os.path.join(out, "offline")
if os.path.isdir(off):
    lines += ["", "Offline `fivefold upcycle` then `fivefold eval --part valid` (whole valid split, seed 1), beside the "
              "online run's step-0 loss (its first %s-sample validation set):" % "128", ""]
    for v, label in [("dense", "dense")] + VARIANTS[1:]:
        p = os.path.join(off, v + ".eval")
        if os.path.exists(p):
            txt = open(p).read().strip().splitlines()
            lines.append("- %s: `%s`%s" % (label, txt[-1] if txt else "?",
                                           "" if v == "dense" else " (online step 0, seed 1: %.4f)" % R[v][0]["v0"]))
if os.path.exists(os.path.join(out, "last_run_seconds")):
    lines += ["", "Run time of the last upcycle.sh call: %s s." % open(os.path.join(out, "last_run_seconds")).read().strip()]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

# Figures.
col = svgplot.COLORS


def curve(rs):
    steps = [st for st, _ in rs[0]["ev"]]
    return steps, [mean([r["ev"][i][1] for r in rs]) for i in range(len(steps))]


full, zoom, delta = [], [], []
ds, dy = curve(dense)
for i, (v, label) in enumerate(VARIANTS):
    xs, ys = curve(R[v])
    dash = "topk_softmax" in v
    full.append(svgplot.Series(label, xs, ys, col[i], dash=dash, markers=True))
    if v != "e16k4_g4_naive":
        zoom.append(svgplot.Series(label, xs, ys, col[i], dash=dash, markers=True))
    delta.append(svgplot.Series(label, xs[2:], [a - b for a, b in zip(ys, dy)][2:], col[i], dash=dash, markers=True))
svgplot.save(os.path.join(fig_dir, "upcycle_loss.svg"), [
    svgplot.Panel("validation loss (mean over seeds)", "continued-training step", "nats/token", full),
    svgplot.Panel("without the naive variant", "continued-training step", "nats/token", zoom),
    svgplot.Panel("minus dense continue (same seed), step 40 on", "continued-training step", "nats/token", delta)],
    title="Dense-to-MoE upcycling from a 1.1M-parameter dense model, equal tokens (seeds %s)" % ", ".join(seeds))
if C:
    dr, lo = [], []
    for i, (suf, label) in enumerate(CFS):
        if suf not in C:
            continue
        r = C[suf]
        steps = [m["step"] for m in r[0]["met"]]
        dr.append(svgplot.Series(label, steps, [mean([x["met"][j]["dropped_fraction"] for x in r]) for j in range(len(steps))], col[i]))
        xs, ys = curve(r)
        lo.append(svgplot.Series(label, xs[1:], ys[1:], col[i], markers=True))
    svgplot.save(os.path.join(fig_dir, "upcycle_capacity.svg"), [
        svgplot.Panel("dropped token fraction", "step", "fraction of routed tokens", dr),
        svgplot.Panel("validation loss", "step", "nats/token", lo)],
        title="E8K2 G1 softmax then top-k: capacity factor (mean over seeds %s)" % ", ".join(seeds))
