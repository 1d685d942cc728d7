#!/usr/bin/env python3
"""Summary and figure of scripts/experiments/hybrid.sh: OUT/summary.md (per model: parameters,
validation loss before and after, the unigram baseline, the paired hybrid - dense difference per
seed with min-max, tokens/s, a sample) and FIG_DIR/hybrid_loss.svg.
    hybrid_report.py OUT FIG_DIR
"""
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402

out, fig_dir = sys.argv[1], sys.argv[2]
seeds = sorted(int(os.path.basename(d)[4:]) for d in glob.glob(os.path.join(out, "seed*")))
MODELS = [("hybrid", "hybrid M-M-M*-M- (Mamba2)"), ("dense", "dense *-*-*-*-*- (Llama-style)")]


def load(name, s):
    d = os.path.join(out, "seed%d" % s, name)
    log = open(d + ".log").read()
    v0 = float(re.search(r"validation loss before training ([0-9.]+)", log).group(1))
    unigram = float(re.search(r"unigram baseline ([0-9.]+)", log).group(1))
    met = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
    ev = [(0, v0)] + [(m["step"], m["valid_loss"]) for m in met if "valid_loss" in m]
    t = sorted(m["tokens_per_s"] for m in met if m["step"] > 10)
    return dict(ev=ev, final=ev[-1][1], unigram=unigram, tps=t[len(t) // 2],
                params=re.search(r"([0-9.]+M) parameters", log).group(1))


def mean(xs):
    return sum(xs) / len(xs)


def ms(xs, f="%.4f"):
    """mean [min, max] over seeds."""
    return f % xs[0] if len(xs) == 1 else (f + " [" + f + ", " + f + "]") % (mean(xs), min(xs), max(xs))


R = {m: [load(m, s) for s in seeds] for m, _ in MODELS}
lines = ["Seeds %s; each value is the mean over seeds with [min, max] beside it." % ", ".join(map(str, seeds)), "",
         "| model | parameters | final validation loss | tokens/s (median step) |", "|---|---|---|---|"]
for m, label in MODELS:
    r = R[m]
    lines.append("| %s | %s | %s | %s |" % (label, r[0]["params"], ms([x["final"] for x in r]),
                                           ms([x["tps"] for x in r], "%.0f")))
d = [a["final"] - b["final"] for a, b in zip(R["hybrid"], R["dense"])]
lines += ["", "Unigram baseline: %.4f nats/token." % R["hybrid"][0]["unigram"],
          "Paired difference of the final validation loss, hybrid minus dense (same seed: same data order): %s; "
          "per seed %s." % (ms(d, "%+.4f"), ", ".join("%+.4f" % x for x in d))]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

col = svgplot.COLORS
series, delta = [], []
for i, (m, label) in enumerate(MODELS):
    xs = [st for st, _ in R[m][0]["ev"]]
    ys = [mean([r["ev"][k][1] for r in R[m]]) for k in range(len(xs))]
    series.append(svgplot.Series(label, xs[1:], ys[1:], col[i], markers=True))
xs = [st for st, _ in R["hybrid"][0]["ev"]][1:]
for j, s in enumerate(seeds):
    delta.append(svgplot.Series("seed %d" % s, xs, [a[1] - b[1] for a, b in zip(R["hybrid"][j]["ev"][1:],
                                                                                 R["dense"][j]["ev"][1:])], col[j + 2],
                                markers=True))
svgplot.save(os.path.join(fig_dir, "hybrid_loss.svg"), [
    svgplot.Panel("validation loss (mean over seeds)", "step (2,048 tokens each)", "nats/token", series),
    svgplot.Panel("hybrid minus dense, per seed", "step", "nats/token", delta)],
    title="Nemotron-H-style hybrid vs dense at 6.12M parameters, equal tokens, KJV (seeds %s)" %
          ", ".join(map(str, seeds)))
