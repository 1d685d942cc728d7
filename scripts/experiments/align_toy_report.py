"""Summary and figures of scripts/experiments/align_toy.sh: reads OUT/seed*/{sft,rm,dpo,ipo,
dpo_long}.log, their metrics.jsonl and compare.*.json, writes OUT/summary.md (a table per seed,
then the mean and the min-max over seeds) and FIG_DIR/align_toy_{rm,dpo,scores}.svg.

Usage: align_toy_report.py OUT "SEEDS" FIG_DIR
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402

out, seeds, fig_dir = sys.argv[1], sys.argv[2].split(), sys.argv[3]
POLICIES = [("dpo", "DPO"), ("ipo", "IPO"), ("dpo_long", "DPO over-trained")]


def metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def before(log):  # the validation pass before training, from the console log
    m = re.search(r"validation loss before training ([0-9.]+)(?:, pairwise accuracy ([0-9.]+))?", open(log).read())
    return float(m.group(1)), (float(m.group(2)) if m.group(2) else None)


def smooth(ys, k=10):
    return [sum(ys[max(0, i - k + 1):i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(ys))]


rows = {}
for s in seeds:
    d = os.path.join(out, "seed" + s)
    r = {}
    r["ntr"], r["nhe"] = map(int, open(os.path.join(d, "pairs.counts")).read().split())
    a, b = re.search(r"validation loss ([0-9.]+) -> ([0-9.]+)", open(os.path.join(d, "sft.log")).read()).groups()
    r["sft_valid"] = float(b)
    rm = metrics(os.path.join(d, "rm", "metrics.jsonl"))
    ev = [m for m in rm if "valid_accuracy" in m]
    r["rm_acc0"] = before(os.path.join(d, "rm.log"))[1]
    r["rm_acc"], r["rm_loss"] = ev[-1]["valid_accuracy"], ev[-1]["valid_loss"]
    r["rm_best"] = max(m["valid_accuracy"] for m in ev)
    for name, _ in POLICIES:
        met = metrics(os.path.join(d, name, "metrics.jsonl"))
        ev = [m for m in met if "valid_accuracy" in m]
        c = json.load(open(os.path.join(d, "compare.%s.json" % name)))
        r[name] = {"valid_loss": ev[-1]["valid_loss"], "valid_acc": ev[-1]["valid_accuracy"],
                   "margin": sum(m["margin"] for m in met[-10:]) / len(met[-10:]),
                   "chosen": sum(m["reward_chosen"] for m in met[-10:]) / len(met[-10:]),
                   "rejected": sum(m["reward_rejected"] for m in met[-10:]) / len(met[-10:]), **c}
    rows[s] = r


def stat(vals, f="%.3f"):
    return (f + " (%s-%s)") % (sum(vals) / len(vals), f % min(vals), f % max(vals)) if len(vals) > 1 else f % vals[0]


L = []
L.append("Reward model: held-out pairwise accuracy (r_chosen > r_rejected) before and after training, and the "
         "held-out Bradley-Terry loss.\n")
L.append("| seed | pairs train / held-out | SFT valid loss | RM held-out accuracy before -> after | RM held-out loss |")
L.append("|---|---|---|---|---|")
for s, r in rows.items():
    L.append("| %s | %d / %d | %.4f | %.3f -> %.3f | %.4f |" % (s, r["ntr"], r["nhe"], r["sft_valid"], r["rm_acc0"],
                                                           r["rm_acc"], r["rm_loss"]))
R = list(rows.values())
L.append("| mean (min-max) | %s / %s | %s | %s -> %s | %s |" % (
    stat([r["ntr"] for r in R], "%.0f"), stat([r["nhe"] for r in R], "%.0f"), stat([r["sft_valid"] for r in R], "%.4f"),
    stat([r["rm_acc0"] for r in R]), stat([r["rm_acc"] for r in R]), stat([r["rm_loss"] for r in R], "%.4f")))
L.append("")
L.append("Policies: one temperature-1 sample per held-out prompt (500) from SFT and from each aligned model; win rate "
         "over SFT by the oracle (tie = 0.5); mean oracle score (number of \"a\" in 10 letters; SFT's is the same "
         "sample for every row); well-formed = exactly 10 letters of the alphabet; distinct = distinct responses / "
         "500; held-out DPO-family loss and implicit-reward accuracy; final implicit rewards beta*Delta (mean of the "
         "last 10 training steps).\n")
L.append("| seed | model | win rate vs SFT | oracle score SFT -> model | well-formed | distinct | held-out loss | "
         "held-out acc | reward chosen / rejected | margin |")
L.append("|---|---|---|---|---|---|---|---|---|---|")
for name, label in POLICIES:
    for s, r in rows.items():
        p = r[name]
        L.append("| %s | %s | %.3f | %.2f -> %.2f | %.3f | %.3f | %.4f | %.3f | %.2f / %.2f | %.2f |" % (
            s, label, p["win_rate"], p["base_score"], p["new_score"], p["new_well_formed"], p["new_distinct"],
            p["valid_loss"], p["valid_acc"], p["chosen"], p["rejected"], p["margin"]))
    P = [r[name] for r in R]
    L.append("| mean (min-max) | %s | %s | %s -> %s | %s | %s | %s | %s | %s / %s | %s |" % (
        label, stat([p["win_rate"] for p in P]), stat([p["base_score"] for p in P], "%.2f"),
        stat([p["new_score"] for p in P], "%.2f"), stat([p["new_well_formed"] for p in P]),
        stat([p["new_distinct"] for p in P]), stat([p["valid_loss"] for p in P], "%.4f"),
        stat([p["valid_acc"] for p in P]), stat([p["chosen"] for p in P], "%.2f"),
        stat([p["rejected"] for p in P], "%.2f"), stat([p["margin"] for p in P], "%.2f")))
secs = os.path.join(out, "last_run_seconds")
if os.path.exists(secs):
    L.append("\nRun time of the last align_toy.sh call: %s s (steps whose outputs existed were skipped)." % open(secs).read().strip())
open(os.path.join(out, "summary.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))

# Figures.
C = svgplot.COLORS
acc, loss = [], []
for i, s in enumerate(seeds):
    d = os.path.join(out, "seed" + s)
    rm = metrics(os.path.join(d, "rm", "metrics.jsonl"))
    ev = [m for m in rm if "valid_accuracy" in m]
    l0, a0 = before(os.path.join(d, "rm.log"))
    acc.append(svgplot.Series("seed %s" % s, [0] + [m["step"] for m in ev], [a0] + [m["valid_accuracy"] for m in ev],
                              C[i], markers=True))
    loss.append(svgplot.Series("seed %s train" % s, [m["step"] for m in rm], smooth([m["loss"] for m in rm]), C[i]))
    loss.append(svgplot.Series("seed %s held-out" % s, [0] + [m["step"] for m in ev],
                               [l0] + [m["valid_loss"] for m in ev], C[i], dash=True, markers=True))
svgplot.save(os.path.join(fig_dir, "align_toy_rm.svg"), [
    svgplot.Panel("held-out pairwise accuracy", "step", "fraction r_chosen > r_rejected", acc, ylim=(0.4, 1.0)),
    svgplot.Panel("Bradley-Terry loss", "step", "nats (train: 10-step mean)", loss)],
    title="Reward model on the hidden-oracle toy task (%d seeds)" % len(seeds), panel_w=420)


def policy_panels(name, label):
    lo, mg, rw = [], [], []
    for i, s in enumerate(seeds):
        met = metrics(os.path.join(out, "seed" + s, name, "metrics.jsonl"))
        ev = [m for m in met if "valid_loss" in m]
        l0 = before(os.path.join(out, "seed" + s, name + ".log"))[0]
        st = [m["step"] for m in met]
        lo.append(svgplot.Series("seed %s train" % s, st, smooth([m["loss"] for m in met]), C[i]))
        lo.append(svgplot.Series("seed %s held-out" % s, [0] + [m["step"] for m in ev],
                                 [l0] + [m["valid_loss"] for m in ev], C[i], dash=True, markers=True))
        mg.append(svgplot.Series("seed %s" % s, st, smooth([m["margin"] for m in met]), C[i]))
        rw.append(svgplot.Series("seed %s chosen" % s, st, smooth([m["reward_chosen"] for m in met]), C[i]))
        rw.append(svgplot.Series("seed %s rejected" % s, st, smooth([m["reward_rejected"] for m in met]), C[i], dash=True))
    return [svgplot.Panel("%s loss" % label, "step", "nats (train: 10-step mean)", lo),
            svgplot.Panel("%s margin beta*(D_c - D_r)" % label, "step", "nats (10-step mean)", mg),
            svgplot.Panel("%s implicit rewards beta*D" % label, "step", "nats (10-step mean)", rw)]


svgplot.save(os.path.join(fig_dir, "align_toy_dpo.svg"), policy_panels("dpo", "DPO"),
             title="DPO (beta 0.2, 120 steps, lr 1e-4 -> 1e-5) from the SFT model, training pairs (%d seeds)" % len(seeds))

hist = []
base = [0] * 11
for s in seeds:
    base = [a + b for a, b in zip(base, rows[s]["dpo"]["base_hist"])]
hist.append(svgplot.Series("SFT", list(range(11)), [v / sum(base) for v in base], "#333333", markers=True))
for j, (name, label) in enumerate(POLICIES):
    h = [0] * 11
    for s in seeds:
        h = [a + b for a, b in zip(h, rows[s][name]["new_hist"])]
    hist.append(svgplot.Series(label, list(range(11)), [v / sum(h) for v in h], C[j], dash=(name == "dpo_long"),
                               markers=True))
long_panels = policy_panels("dpo_long", "over-trained DPO")
svgplot.save(os.path.join(fig_dir, "align_toy_scores.svg"),
             [svgplot.Panel("oracle score of held-out samples (all seeds)", "number of 'a' in the response (0 if malformed)",
                            "fraction of responses", hist, xlim=(0, 10)), long_panels[2]],
             title="What the aligned models generate, and the over-trained DPO's implicit rewards", panel_w=440)
print("figures in", fig_dir)
