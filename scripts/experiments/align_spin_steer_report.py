"""Summary and figures of scripts/experiments/align_spin_steer.sh: reads OUT/seed*/ (spin/spin.jsonl,
spin/iter-*/metrics.jsonl, margins/*.json, spin_eval.*.score.json, am/metrics.jsonl, annotation.json,
steer.log, steer_eval.*.score.json, steer_greedy.*.score.json), writes OUT/summary.md (tables per
seed, then the mean and min-max over seeds) and FIG_DIR/align_spin.svg (SPIN_FIG to rename it),
FIG_DIR/align_steerlm.svg; a half that was not run (PARTS) is left out.

Usage: align_spin_steer_report.py OUT "SEEDS" FIG_DIR
"""
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402
from make_preferences import oracle, read_jsonl  # noqa: E402

out, seeds, fig_dir = sys.argv[1], sys.argv[2].split(), sys.argv[3]
LEVELS = range(5)


def load(path):
    return json.load(open(path))


def metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def stat(vals, f="%.2f"):
    return (f + " (%s–%s)") % (sum(vals) / len(vals), f % min(vals), f % max(vals)) if len(vals) > 1 else f % vals[0]


def smooth(ys, k=10):
    return [sum(ys[max(0, i - k + 1):i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(ys))]


iters = len(glob.glob(os.path.join(out, "seed" + seeds[0], "spin", "iter-*", "model.safetensors")))
has_spin = os.path.exists(os.path.join(out, "seed" + seeds[0], "spin", "spin.jsonl"))
has_steer = os.path.exists(os.path.join(out, "seed" + seeds[0], "steer.log"))
real = read_jsonl(os.path.join(out, "data", "spin_heldout.jsonl"))
real_score = sum(oracle(r["response"]) for r in real) / len(real)
spin, steer = {}, {}
for s in seeds if has_spin else []:
    d = os.path.join(out, "seed" + s)
    log = {r["iteration"]: r for r in metrics(os.path.join(d, "spin", "spin.jsonl"))}
    rows = []
    for k in range(iters + 1):
        r = {"score": load(os.path.join(d, "spin_eval.%d.score.json" % k)),
             "own": load(os.path.join(d, "margins", "own.%d.json" % k)),
             "fixed": load(os.path.join(d, "margins", "fixed.%d.json" % k))}
        if k > 0:
            r["game"] = load(os.path.join(d, "margins", "game.%d.json" % k))
            r["log"] = log[k]
        rows.append(r)
    spin[s] = rows
for s in seeds if has_steer else []:
    d = os.path.join(out, "seed" + s)
    am = metrics(os.path.join(d, "am", "metrics.jsonl"))
    am0 = float(re.search(r"validation loss before training ([0-9.]+)", open(os.path.join(d, "am.log")).read()).group(1))
    st = re.search(r"validation loss ([0-9.]+) -> ([0-9.]+)", open(os.path.join(d, "steer.log")).read())
    ann = read_jsonl(os.path.join(d, "steer_sft.annotated.jsonl"))
    data_score = []  # mean oracle score of the SFT data's responses annotated with each level
    for v in LEVELS:
        sc = [oracle(r["response"]) for r in ann if r["attributes"]["a_level"] == v]
        data_score.append(sum(sc) / len(sc) if sc else None)
    steer[s] = {"am0": am0, "am": [m["valid_loss"] for m in am if "valid_loss" in m][-1], "am_curve": am,
                "annotation": load(os.path.join(d, "annotation.json")), "sft0": float(st.group(1)),
                "sft": float(st.group(2)), "data_score": data_score,
                "t": [load(os.path.join(d, "steer_eval.%d.score.json" % v)) for v in LEVELS],
                "g": [load(os.path.join(d, "steer_greedy.%d.score.json" % v)) for v in LEVELS]}


def monotone(xs):
    return "yes" if all(b > a for a, b in zip(xs, xs[1:])) else "no"


def on_target(sc, v):  # fraction of generations whose oracle level is the requested one
    h = sc["hist"]
    return sum(h[c] for c in range(11) if min(4, c // 2) == v) / sc["n"]


L = []
if has_spin:
    L.append("SPIN: per model (0 = SFT, k = after iteration k) on the 200 held-out SPIN prompts. Oracle score = mean "
             "number of \"a\" in the model's temperature-1 samples (the real responses score %.2f). Margins are the "
             "implicit reward beta*(log pi - log pi_ref) of the real response minus that of the other response, mean over "
             "the 200 prompts, beta 0.2: \"own\" against the model's own sample and \"SFT sample\" against the SFT "
             "model's, both with the SFT model as reference; \"game\" against the previous model's sample with the "
             "previous model as reference (what iteration k optimised); acc = fraction of prompts with margin > 0; SPIN "
             "valid = `align spin`'s own held-out DPO loss and accuracy of iteration k.\n" % real_score)
    L.append("| seed | model | oracle score | well-formed | distinct | margin vs own sample (r_real / r_own) | "
             "margin vs SFT sample | game margin (acc) | SPIN valid loss (acc) |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for s, rows in spin.items():
        for k, r in enumerate(rows):
            g = ("%.3f (%.3f)" % (r["game"]["margin"], r["game"]["accuracy"])) if k else "–"
            lg = ("%.4f (%.3f)" % (r["log"]["valid_loss"], r["log"]["valid_accuracy"])) if k else "–"
            L.append("| %s | %s | %.2f | %.3f | %.3f | %.3f (%.3f / %.3f) | %.3f | %s | %s |" % (
                s, "SFT" if k == 0 else "iter %d" % k, r["score"]["score"], r["score"]["well_formed"],
                r["score"]["distinct"], r["own"]["margin"], r["own"]["reward_chosen"], r["own"]["reward_rejected"],
                r["fixed"]["margin"], g, lg))
    L.append("")
    L.append("SPIN, mean (min–max) over %d seeds:\n" % len(seeds))
    L.append("| model | oracle score | margin vs own sample | r_real / r_own | margin vs SFT sample | game margin | "
             "game acc | SPIN valid loss |")
    L.append("|---|---|---|---|---|---|---|---|")
    for k in range(iters + 1):
        R = [spin[s][k] for s in seeds]
        L.append("| %s | %s | %s | %s / %s | %s | %s | %s | %s |" % (
            "SFT" if k == 0 else "iter %d" % k, stat([r["score"]["score"] for r in R]),
            stat([r["own"]["margin"] for r in R], "%.3f"), stat([r["own"]["reward_chosen"] for r in R], "%.3f"),
            stat([r["own"]["reward_rejected"] for r in R], "%.3f"), stat([r["fixed"]["margin"] for r in R], "%.3f"),
            stat([r["game"]["margin"] for r in R], "%.3f") if k else "–",
            stat([r["game"]["accuracy"] for r in R], "%.3f") if k else "–",
            stat([r["log"]["valid_loss"] for r in R], "%.4f") if k else "–"))
    L.append("")
if has_steer:
    L.append("SteerLM: attribute model (value head, squared error on a_level) held-out loss before -> after; annotation "
             "of the 4,000 SFT responses against the oracle's level (exact fraction, mean absolute error); "
             "attribute-conditioned SFT held-out loss; then the mean oracle score of one answer per held-out prompt "
             "(500) for each requested a_level 0..4, temperature 1 and greedy; monotone = strictly increasing in the "
             "requested level.\n")
    L.append("| seed | AM loss | annotation exact / MAE | SteerLM SFT loss | score at a_level 0 / 1 / 2 / 3 / 4 (T=1) | "
             "monotone | greedy 0 / 1 / 2 / 3 / 4 | monotone |")
    L.append("|---|---|---|---|---|---|---|---|")
    for s, r in steer.items():
        t, g = [x["score"] for x in r["t"]], [x["score"] for x in r["g"]]
        L.append("| %s | %.3f -> %.3f | %.3f / %.3f | %.4f -> %.4f | %s | %s | %s | %s |" % (
            s, r["am0"], r["am"], r["annotation"]["exact"], r["annotation"]["mae"], r["sft0"], r["sft"],
            " / ".join("%.2f" % x for x in t), monotone(t), " / ".join("%.2f" % x for x in g), monotone(g)))
    L.append("")
    L.append("SteerLM, per requested a_level, mean (min–max) over %d seeds: oracle score (T=1), the fraction of answers "
             "at the requested level, well-formed and distinct fractions, greedy score, and the mean oracle score of the "
             "annotated SFT responses of that level (what the SFT data taught).\n" % len(seeds))
    L.append("| a_level | score (T=1) | on target | well-formed | distinct | greedy score | SFT data at this level |")
    L.append("|---|---|---|---|---|---|---|")
    for v in LEVELS:
        R = list(steer.values())
        ds = [r["data_score"][v] for r in R if r["data_score"][v] is not None]
        L.append("| %d | %s | %s | %s | %s | %s | %s |" % (
            v, stat([r["t"][v]["score"] for r in R]), stat([on_target(r["t"][v], v) for r in R], "%.3f"),
            stat([r["t"][v]["well_formed"] for r in R], "%.3f"), stat([r["t"][v]["distinct"] for r in R], "%.3f"),
            stat([r["g"][v]["score"] for r in R]), stat(ds) if ds else "none"))
    R = list(steer.values())
    L.append("| all | monotone (T=1) in %d of %d seeds, greedy in %d of %d | | | | | |" % (
        sum(monotone([x["score"] for x in r["t"]]) == "yes" for r in R), len(R),
        sum(monotone([x["score"] for x in r["g"]]) == "yes" for r in R), len(R)))
secs = os.path.join(out, "last_run_seconds")
if os.path.exists(secs):
    L.append("\nRun time of the last align_spin_steer.sh call: %s s (steps whose outputs existed were skipped)."
             % open(secs).read().strip())
open(os.path.join(out, "summary.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))

# Figures.
C = svgplot.COLORS
if has_spin:
    ks = list(range(iters + 1))
    sc, mg, game, train = [], [], [], []
    for i, s in enumerate(seeds):
        rows = spin[s]
        sc.append(svgplot.Series("seed %s" % s, ks, [r["score"]["score"] for r in rows], C[i], markers=True))
        mg.append(svgplot.Series("", ks, [r["fixed"]["margin"] for r in rows], C[i], markers=True))
        mg.append(svgplot.Series("", ks, [r["own"]["margin"] for r in rows], C[i], dash=True, markers=True))
        game.append(svgplot.Series("seed %s" % s, list(range(1, iters + 1)),
                                   [rows[k]["game"]["margin"] for k in range(1, iters + 1)], C[i], markers=True))
        xs, ys, off = [], [], 0
        for k in range(1, iters + 1):
            met = metrics(os.path.join(out, "seed" + s, "spin", "iter-%d" % k, "metrics.jsonl"))
            xs += [off + m["step"] for m in met]
            ys += smooth([m["margin"] for m in met])
            off += met[-1]["step"]
        train.append(svgplot.Series("", xs, ys, C[i]))  # colours: seeds, as in the other panels
        steps = off // iters
    sc.append(svgplot.Series("real responses", ks, [real_score] * len(ks), "#333333", dash=True))
    mg.append(svgplot.Series("real vs SFT's sample", [], [], "#333333"))  # legend only (colours: seeds, as left)
    mg.append(svgplot.Series("real vs own sample", [], [], "#333333", dash=True))
    top = max(max(x.ys) for x in sc)
    svgplot.save(os.path.join(fig_dir, os.environ.get("SPIN_FIG", "align_spin.svg")), [
        svgplot.Panel("oracle score of the model's own samples", "SPIN iteration (0 = SFT)", "mean number of 'a'", sc,
                      ylim=(0, max(6, 2 * int(top / 2 + 1))), legend="br"),
        svgplot.Panel("held-out r_real - r_other, ref = SFT", "SPIN iteration (0 = SFT)",
                      "beta * Delta log-prob (nats)", mg, legend="bl"),
        svgplot.Panel("held-out game margin: ref = previous", "SPIN iteration k (real vs model k-1's sample)",
                      "beta * Delta log-prob (nats)", game, legend="tl" if game[0].ys[-1] > game[0].ys[0] else "tr"),
        svgplot.Panel("training margin (10-step mean; seeds as left)", "DPO step (iterations concatenated)",
                      "beta * Delta log-prob (nats)", train)],
        title="SPIN on the hidden-oracle toy task (%d iterations of %d DPO steps, beta 0.2; %d seeds)"
              % (iters, steps, len(seeds)), panel_w=400)

if has_steer:
    t, g, hist = [], [], []
    for i, s in enumerate(seeds):
        r = steer[s]
        t.append(svgplot.Series("seed %s" % s, list(LEVELS), [x["score"] for x in r["t"]], C[i], markers=True))
        g.append(svgplot.Series("seed %s" % s, list(LEVELS), [x["score"] for x in r["g"]], C[i], markers=True))
    dv = [v for v in LEVELS if all(steer[s]["data_score"][v] is not None for s in seeds)]  # levels the annotation used
    ds = [sum(steer[s]["data_score"][v] for s in seeds) / len(seeds) for v in dv]
    t.append(svgplot.Series("SFT data of that level", dv, ds, "#333333", dash=True, markers=True))
    g.append(svgplot.Series("SFT data of that level", dv, ds, "#333333", dash=True, markers=True))
    for v in LEVELS:
        h = [sum(steer[s]["t"][v]["hist"][c] for s in seeds) for c in range(11)]
        hist.append(svgplot.Series("a_level:%d" % v, list(range(11)), [x / sum(h) for x in h], C[v], markers=True))
    svgplot.save(os.path.join(fig_dir, "align_steerlm.svg"), [
        svgplot.Panel("requested a_level -> oracle score (T = 1)", "requested a_level", "mean number of 'a'", t,
                      ylim=(0, 10)),
        svgplot.Panel("requested a_level -> oracle score (greedy)", "requested a_level", "mean number of 'a'", g,
                      ylim=(0, 10)),
        svgplot.Panel("score distribution per requested level (T = 1, all seeds)", "number of 'a' (0 if malformed)",
                      "fraction of answers", hist, xlim=(0, 10))],
        title="SteerLM on the hidden-oracle toy task: attribute model, annotation, conditioned SFT (%d seeds)" % len(seeds),
        panel_w=440)
print("figures in", fig_dir)
