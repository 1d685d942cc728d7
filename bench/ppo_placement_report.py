#!/usr/bin/env python3
"""The table of bench/ppo_placement.sh: per run, medians over the iterations after the first two
of each phase of a PPO iteration as world rank 0 saw it (rollouts, scores complete, training to
the iteration's end) and of each group's busy time (the actor's scoring and training, the
critic's; in a split run the critic scores rollout chunks during generation and trains while the
actor trains).

    bench/ppo_placement_report.py OUT_DIR RUN [RUN...]
"""
import json
import os
import statistics
import sys


def medians(path):
    rows = [json.loads(line) for line in open(path)]
    settled = rows[2:] if len(rows) > 3 else rows
    keys = ["iteration_s", "rollout_s", "score_s", "train_s", "actor_score_s", "actor_train_s", "critic_score_s",
            "critic_train_s", "generated_tokens_per_s"]
    return {k: statistics.median(r[k] for r in settled) for k in keys}, len(settled)


def main():
    out, runs = sys.argv[1], sys.argv[2:]
    print("| run | iteration | rollouts | scoring | training | actor scoring / training | critic scoring / training "
          "| generated tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        m, n = medians(os.path.join(out, run, "metrics.jsonl"))
        it = m["iteration_s"]
        share = lambda k: "%.2f s (%.0f%%)" % (m[k], 100 * m[k] / it)
        print("| %s (%d its) | %.2f s | %s | %s | %s | %.2f / %.2f s | %.2f / %.2f s | %.0f |" % (
            run, n, it, share("rollout_s"), share("score_s"), share("train_s"), m["actor_score_s"],
            m["actor_train_s"], m["critic_score_s"], m["critic_train_s"], m["generated_tokens_per_s"]))


if __name__ == "__main__":
    main()
