#!/usr/bin/env python3
"""Summary and figure of scripts/experiments/prune_kd.sh: OUT/summary.md (per variant: parameters,
pattern, validation loss before retraining and at the end, greedy generation speed; the paired
differences against the group-aware + KD student per seed, with min-max and a 95% t-interval)
and FIG_DIR/prune_kd_loss.svg.
    prune_kd_report.py OUT FIG_DIR
"""
import array
import glob
import json
import math
import os
import re
import statistics
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402

out, fig_dir = sys.argv[1], sys.argv[2]
seeds = sorted(int(os.path.basename(d)[4:]) for d in glob.glob(os.path.join(out, "seed*")) if os.path.isdir(d))
VARIANTS = [
    ("aware_kd", "aware", "a. width, group-aware + KD"),
    ("unaware_kd", "unaware", "b. width, group-unaware + KD"),
    ("aware_lm", "aware", "c. width, group-aware + LM loss"),
    ("random_lm", None, "d. width's shape, random init + LM loss"),
    ("depth_kd", "depth", "e. depth + KD"),
    ("ffn_kd", "ffn", "f. FFN + embedding only + KD"),
    ("channels_kd", "channels", "g. width, Mamba2 head channels + KD"),
]
VARIANTS = [v for v in VARIANTS if all(os.path.exists(os.path.join(out, "seed%d" % s, v[0], "model.safetensors"))
                                       for s in seeds)]
T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


def safetensors_info(path):
    with open(path, "rb") as f:
        h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    n = sum(math.prod(v["shape"]) for k, v in h.items() if k != "__metadata__")
    cfg = json.loads(h.get("__metadata__", {}).get("fivefold_config", "{}"))
    return n, cfg.get("model", cfg)


def eval_loss(name):
    p = os.path.join(out, "eval", name + ".txt")
    m = re.search(r"^loss ([0-9.]+)", open(p).read(), re.M) if os.path.exists(p) else None
    return float(m.group(1)) if m else None


def gen_speed(name):
    p = os.path.join(out, "gen", name + ".txt")
    if not os.path.exists(p):
        return None, 0
    t = [float(x) for x in re.findall(r"([0-9.]+) tokens/s", open(p).read())]
    return (statistics.median(t), len(t)) if t else (None, 0)


def load_run(d):
    log = open(d + ".log").read()
    v0 = float(re.search(r"validation loss before training ([0-9.]+)", log).group(1))
    met = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
    ev = [(0, v0)] + [(m["step"], m["valid_loss"]) for m in met if "valid_loss" in m]
    wall = open(d + ".wall_s").read().strip() if os.path.exists(d + ".wall_s") else None
    return dict(ev=ev, v0=v0, final=ev[-1][1], wall=float(wall) if wall else None,
                params=int(safetensors_info(os.path.join(d, "model.safetensors"))[0]),
                pattern=re.search(r"pattern (\S+),", log).group(1),
                tokens=re.search(r"(\d+) steps of (\d+) x (\d+) x (\d+) tokens", log).groups())


def mean(xs):
    return sum(xs) / len(xs)


def ms(xs, f="%.4f"):
    """mean [min, max] over seeds."""
    return f % xs[0] if len(xs) == 1 else (f + " [" + f + ", " + f + "]") % (mean(xs), min(xs), max(xs))


def tint(xs, f="%+.4f"):
    """mean, 95% t-interval over seeds, per-seed values."""
    if len(xs) < 2:
        return f % xs[0]
    h = T95.get(len(xs), 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return (f + " (95%% t-interval " + f + " to " + f + "; min " + f + ", max " + f + ")") % (
        mean(xs), mean(xs) - h, mean(xs) + h, min(xs), max(xs))


R = {v: [load_run(os.path.join(out, "seed%d" % s, v)) for s in seeds] for v, _, _ in VARIANTS}
tlog = open(os.path.join(out, "teacher.log")).read()
tmet = [json.loads(line) for line in open(os.path.join(out, "teacher", "metrics.jsonl"))]
tev = [(m["step"], m["valid_loss"]) for m in tmet if "valid_loss" in m]
tparams, tcfg = safetensors_info(os.path.join(out, "teacher", "model.safetensors"))
tsteps = re.search(r"(\d+) steps of (\d+) x (\d+) x (\d+) tokens", tlog).groups()
unigram = float(re.search(r"unigram baseline ([0-9.]+)", tlog).group(1))
tgen = gen_speed("teacher")

lines = ["Teacher: %s, %d parameters, %s steps of %s x %s tokens; validation loss %.4f (fivefold eval on the "
         "valid split: %s); greedy generation %s tokens/s (median of %d)." % (
             tcfg.get("layer_pattern"), tparams, tsteps[0], tsteps[2], tsteps[3], tev[-1][1],
             eval_loss("teacher"), "%.0f" % tgen[0] if tgen[0] else "-", tgen[1]),
         "Unigram baseline %.4f nats/token." % unigram,
         "Students: %s steps of %s x %s tokens; seeds %s; each value is the mean over seeds with [min, max]." % (
             R[VARIANTS[0][0]][0]["tokens"][0], R[VARIANTS[0][0]][0]["tokens"][2],
             R[VARIANTS[0][0]][0]["tokens"][3], ", ".join(map(str, seeds))), "",
         "| variant | pattern | parameters (of teacher) | valid loss before retraining | final valid loss | "
         "generation tokens/s (seed %d, median) | wall s per run |" % seeds[0],
         "|---|---|---|---|---|---|---|"]
for v, pruned, label in VARIANTS:
    r = R[v]
    g = gen_speed(v)
    walls = [x["wall"] for x in r if x["wall"]]
    lines.append("| %s | %s | %d (%.1f%%) | %s | %s | %s | %s |" % (
        label, r[0]["pattern"], r[0]["params"], 100.0 * r[0]["params"] / tparams, ms([x["v0"] for x in r]),
        ms([x["final"] for x in r]), "%.0f" % g[0] if g[0] else "-", "%.0f" % mean(walls) if walls else "-"))
lines.append("| teacher | %s | %d (100%%) | - | %.4f | %s | - |" % (
    tcfg.get("layer_pattern"), tparams, tev[-1][1], "%.0f" % tgen[0] if tgen[0] else "-"))



def load_tensor(path, name):
    """one fp32 tensor of a .safetensors file, as a flat list."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        lo, hi = h[name]["data_offsets"]
        f.seek(8 + n + lo)
        arr = array.array("f")
        arr.frombytes(f.read(hi - lo))
    return list(arr)


def misplaced_heads():
    """Per Mamba2 layer of the teacher: how many heads the group-unaware plan attaches to another group's
    B/C and norm group (kept heads found by their A_log values in each pruned file)."""
    tpath = os.path.join(out, "teacher", "model.safetensors")
    H, G = tcfg["mamba_num_heads"], tcfg["mamba_groups"]
    res = []
    for i, kind in enumerate(tcfg["layer_pattern"]):
        if kind != "M":
            continue
        name = "model.layers.%d.mixer.A_log" % i
        ta = load_tensor(tpath, name)
        kept = {}
        for n in ("aware", "unaware"):
            kept[n] = [ta.index(x) for x in load_tensor(os.path.join(out, "pruned", n + ".safetensors"), name)]
        hp = len(kept["unaware"])
        wrong = sum(1 for j, h in enumerate(kept["unaware"]) if h // (H // G) != j // (hp // G))
        same = sorted(kept["aware"]) == sorted(kept["unaware"])
        res.append((i, wrong, same))
    return res


if os.path.exists(os.path.join(out, "pruned", "unaware.safetensors")):
    mp = misplaced_heads()
    lines += ["", "Group-unaware plan, per Mamba2 layer: heads attached to another group's B/C (of %d kept); "
              "the kept set equals the group-aware one: " % len(load_tensor(
                  os.path.join(out, "pruned", "unaware.safetensors"), "model.layers.0.mixer.A_log")) +
              ", ".join("layer %d: %d%s" % (i, w, " (same heads)" if same else "") for i, w, same in mp)]
lines += ["", "Loss of each pruned model before retraining, fivefold eval --part valid (whole split): " +
          ", ".join("%s %.4f" % (n, eval_loss(n)) for n in ("aware", "unaware", "depth", "ffn", "channels") if eval_loss(n)), ""]
lines.append("Paired differences, per seed (same seed: same data order), against a (group-aware + KD); "
             "positive = a is better:")
a = R.get("aware_kd")
if a:
    if "unaware_kd" in R:
        d0 = [y["v0"] - x["v0"] for x, y in zip(a, R["unaware_kd"])]
        lines.append("- b - a before retraining: %s; per seed %s" % (tint(d0), ", ".join("%+.4f" % x for x in d0)))
    for v, _, label in VARIANTS[1:]:
        d = [y["final"] - x["final"] for x, y in zip(a, R[v])]
        lines.append("- %s - a, final: %s; per seed %s" % (label[:1], tint(d), ", ".join("%+.4f" % x for x in d)))
if "ffn_kd" in R and "depth_kd" in R:
    d = [y["final"] - x["final"] for x, y in zip(R["ffn_kd"], R["depth_kd"])]
    lines.append("- e - f, final: %s" % tint(d))
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

col = svgplot.COLORS
full, zoom, delta = [], [], []
for i, (v, _, label) in enumerate(VARIANTS):
    xs = [st for st, _ in R[v][0]["ev"]]
    ys = [mean([r["ev"][k][1] for r in R[v]]) for k in range(len(xs))]
    full.append(svgplot.Series(label, xs[1:], ys[1:], col[i], markers=True))
    if v == "random_lm":
        continue
    zoom.append(svgplot.Series(label[:1], xs[1:], ys[1:], col[i], markers=True))
    if v != "aware_kd" and a:
        dy = [mean([r["ev"][k][1] - q["ev"][k][1] for r, q in zip(R[v], a)]) for k in range(len(xs))]
        delta.append(svgplot.Series(label[:1] + " - a", xs, dy, col[i], markers=True))
xs = full[0].xs if full else [0]
for p in (full, zoom):
    p.append(svgplot.Series("teacher (final)", [xs[0], xs[-1]], [tev[-1][1]] * 2, "#7f7f7f", dash=True))
zy = [y for sr in zoom for y in sr.ys]
svgplot.save(os.path.join(fig_dir, "prune_kd_loss.svg"), [
    svgplot.Panel("validation loss (mean over seeds)", "step (2,048 tokens each)", "nats/token", full),
    svgplot.Panel("the same without d", "step", "nats/token", zoom,
                  ylim=(min(zy) - 0.01, max(zy) + 0.01) if zy else None),
    svgplot.Panel("minus a, paired by seed (step 0: before)", "step", "nats/token", delta)],
    title="Pruning a %.2fM hybrid to ~%.2fM and retraining for %s tokens, KJV (seeds %s)" % (
        tparams / 1e6, R[VARIANTS[0][0]][0]["params"] / 1e6, "{:,}".format(
            int(R[VARIANTS[0][0]][0]["tokens"][0]) * int(R[VARIANTS[0][0]][0]["tokens"][2]) *
            int(R[VARIANTS[0][0]][0]["tokens"][3])), ", ".join(map(str, seeds))), panel_w=400, panel_h=340)
