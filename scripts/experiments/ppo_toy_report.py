"""Summary and figures of scripts/experiments/ppo_toy.sh: reads OUT/seed*/beta*/metrics.jsonl and
OUT/seed*/compare.beta*.json, writes OUT/summary.md (per-seed table and the mean [min, max] over
seeds per run, paired differences between betas, where an iteration's time goes) and
FIG_DIR/ppo_{reward,kl}.svg (seed means per run against the iteration). A run is a beta with the
absolute per-token KL estimate in the rewards (the default), or "B_signed": beta B with the signed
one (--ppo_absolute_kl false).

"Start" is the mean RM score of iterations 1-3, whose rollouts all come from the SFT actor (2
critic-only warm-up iterations, and iteration 3 rolls out before its first actor update);
"final" is the mean over the last 5 iterations (320 rollouts); gain = final - start.

Usage: ppo_toy_report.py OUT "SEEDS" "BETAS" "SIGNED_BETAS" FIG_DIR
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402

out, seeds, fig_dir = sys.argv[1], sys.argv[2].split(), sys.argv[5]
ABS, SIGNED = sys.argv[3].split(), [b + "_signed" for b in sys.argv[4].split()]
betas = ABS + SIGNED  # run names


def value(b):
    return b[:-len("_signed")] if b.endswith("_signed") else b


def label(b):
    return "beta %s, signed KL" % value(b) if b.endswith("_signed") else "beta %s" % b
START, LAST = 3, 5


def metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean(v):
    return sum(v) / len(v)


def stat(vals, f="%.2f"):
    return (f + " [%s, %s]") % (mean(vals), f % min(vals), f % max(vals)) if len(vals) > 1 else f % vals[0]


rows = {}  # (beta, seed) -> dict
for b in betas:
    for s in seeds:
        d = os.path.join(out, "seed" + s)
        met = metrics(os.path.join(d, "beta" + b, "metrics.jsonl"))
        c = json.load(open(os.path.join(d, "compare.beta%s.json" % b)))
        r = {"met": met, "start": mean([m["reward"] for m in met[:START]]),
             "final": mean([m["reward"] for m in met[-LAST:]]), "kl": mean([m["kl"] for m in met[-LAST:]]),
             "kl_mid": mean([m["kl"] for m in met[len(met) // 2 - LAST:len(met) // 2]]),
             "len": mean([m["response_length"] for m in met[-LAST:]]), "ended": mean([m["ended"] for m in met[-LAST:]]),
             "rollout_s": sum(m["rollout_s"] for m in met), "score_s": sum(m["score_s"] for m in met),
             "train_s": sum(m["train_s"] for m in met), **c}
        r["gain"] = r["final"] - r["start"]
        sec = os.path.join(d, "beta%s.seconds" % b)
        r["wall"] = float(open(sec).read()) if os.path.exists(sec) else None
        rows[b, s] = r
iters = len(rows[betas[0], seeds[0]]["met"])

COLS = [("start", "RM score start", "%.2f"), ("final", "RM score final", "%.2f"), ("gain", "gain", "%.2f"),
        ("kl", "KL final", "%.1f"), ("kl_mid", "KL mid-run", "%.1f"), ("new_score", "oracle score", "%.2f"),
        ("win_rate", "win rate vs SFT", "%.3f"), ("new_well_formed", "well-formed", "%.3f"),
        ("new_distinct", "distinct", "%.3f")]
L = ["PPO on the hidden-oracle toy task, %d iterations of 64 rollouts; RM score start = mean of iterations 1-%d "
     "(SFT rollouts), final = mean of the last %d; KL = mean over rollouts of sum_t (logp - logp_ref) over the "
     "response (nats per sequence; final: last %d iterations, mid-run: the %d before iteration %d); oracle score, "
     "win rate, well-formed and distinct: one temperature-1 sample per held-out prompt (500) from the final actor "
     "against the SFT sample (oracle score of SFT: %s).\n"
     % (iters, START, LAST, LAST, LAST, iters // 2 + 1,
        stat([rows[betas[0], s]["base_score"] for s in seeds]))]
L.append("| run | seed | " + " | ".join(c[1] for c in COLS) + " |")
L.append("|---|---|" + "---|" * len(COLS))
for b in betas:
    for s in seeds:
        r = rows[b, s]
        L.append("| %s | %s | " % (label(b), s) + " | ".join(f % r[k] for k, _, f in COLS) + " |")
    L.append("| **%s** | mean [min, max] | " % label(b) + " | ".join(stat([rows[b, s][k] for s in seeds], f) for k, _, f in COLS) + " |")
L.append("")
L.append("Paired differences, per seed (second run minus first); between betas the claim expects KL < 0 and "
         "gain < 0.\n")
DIFF = [("kl", "KL final", "%.2f"), ("gain", "RM gain", "%.2f"), ("new_score", "oracle score", "%.2f"),
        ("win_rate", "win rate", "%.3f"), ("new_distinct", "distinct", "%.3f")]
L.append("| runs | " + " | ".join("%s (seeds %s)" % (c[1], ", ".join(seeds)) for c in DIFF) + " |")
L.append("|---|" + "---|" * len(DIFF))
PAIRS = list(zip(ABS, ABS[1:])) + list(zip(SIGNED, SIGNED[1:])) + [(value(b), b) for b in SIGNED if value(b) in ABS]
for lo, hi in PAIRS:
    cells = []
    for k, _, f in DIFF:
        d = [rows[hi, s][k] - rows[lo, s][k] for s in seeds]
        cells.append(", ".join(("%+" + f[1:]) % v for v in d) + " (mean %s)" % (("%+" + f[1:]) % mean(d)))
    L.append("| %s -> %s | " % (label(lo), label(hi)) + " | ".join(cells) + " |")
L.append("")
L.append("Where an iteration's time goes (sums of rollout_s, score_s and train_s over all iterations and seeds; "
         "scoring = the actor's, reference's, critic's and RM's forward passes over the rollouts; wall = the whole "
         "`align ppo` process, model loading included).\n")
L.append("| run | rollout (generation) | scoring | training | s per iteration | wall per run (s) |")
L.append("|---|---|---|---|---|---|")
for b in betas:
    R = [rows[b, s] for s in seeds]
    g, sc, tr = sum(r["rollout_s"] for r in R), sum(r["score_s"] for r in R), sum(r["train_s"] for r in R)
    tot = g + sc + tr
    walls = [r["wall"] for r in R if r["wall"] is not None]
    L.append("| %s | %.0f%% | %.0f%% | %.0f%% | %.3f | %s |" % (label(b), 100 * g / tot, 100 * sc / tot, 100 * tr / tot,
                                                           tot / (len(R) * iters), stat(walls, "%.0f") if walls else "-"))
secs = os.path.join(out, "last_run_seconds")
if os.path.exists(secs):
    L.append("\nRun time of the last ppo_toy.sh call: %s s (runs whose outputs existed were skipped)." % open(secs).read().strip())
open(os.path.join(out, "summary.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))

# Figures: seed means per beta against the iteration.
C = svgplot.COLORS
x = list(range(1, iters + 1))


def seed_mean(b, key):
    return [mean([rows[b, s]["met"][i][key] for s in seeds]) for i in range(iters)]


def smooth(ys, k=5):  # trailing mean over k iterations
    return [mean(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]


def spread(b, key, f):
    return [f(rows[b, s]["met"][i][key] for s in seeds) for i in range(iters)]


rw, frontier, kl_abs, kl_signed = [], [], [], []
VALUES = list(dict.fromkeys(value(b) for b in betas))  # a colour per beta value
for b in betas:
    j, signed = VALUES.index(value(b)), b.endswith("_signed")
    rw.append(svgplot.Series(label(b), x, seed_mean(b, "reward"), C[j], dash=signed))
    frontier.append(svgplot.Series(label(b), smooth(seed_mean(b, "kl")), smooth(seed_mean(b, "reward")), C[j], dash=signed))
    kl = kl_signed if signed else kl_abs
    kl.append(svgplot.Series(label(b) + " mean", x, seed_mean(b, "kl"), C[j]))
    # the seeds' min-max band as one closed outline: along the minimum, back along the maximum
    kl.append(svgplot.Series(label(b) + " min-max", x + x[::-1], spread(b, "kl", min) + spread(b, "kl", max)[::-1],
                             C[j], dash=True))
svgplot.save(os.path.join(fig_dir, "ppo_reward.svg"), [
    svgplot.Panel("RM score of the rollouts, mean of %d seeds" % len(seeds), "iteration", "mean RM score (64 rollouts)", rw,
                  ylim=(-1, 10)),
    svgplot.Panel("RM score against KL, mean of %d seeds (5-iteration means)" % len(seeds),
                  "KL to the reference (nats per sequence)", "mean RM score", frontier, ylim=(-1, 10))],
    title="PPO on the hidden-oracle toy task: reward over iterations, per KL beta (dashed: signed KL in the rewards)",
    panel_w=460)
kmax = max(max(s.ys) for s in kl_abs + kl_signed)
panels = [svgplot.Panel("absolute KL estimate in the rewards (default)", "iteration",
                        "mean sum_t (logp - logp_ref), nats per sequence", kl_abs, ylim=(0, kmax * 1.5))]
if kl_signed:
    panels.append(svgplot.Panel("signed KL estimate in the rewards", "iteration",
                                "mean sum_t (logp - logp_ref), nats per sequence", kl_signed, ylim=(0, kmax * 1.5)))
svgplot.save(os.path.join(fig_dir, "ppo_kl.svg"), panels,
             title="PPO on the hidden-oracle toy task: KL to the reference over iterations (mean and min-max of %d seeds)"
             % len(seeds), panel_w=460)
print("figures in", fig_dir)
