"""End to end through the command line: `fivefold train` on a small text corpus gives the same
per-step losses and expert loads under several parallel layouts of the same global batch (one
process with gradient accumulation, DP x EP, TP + SP x PP, CP with the distributed optimizer), a run stopped
at a checkpoint resumes under another layout with the same losses, and `fivefold generate`
samples from the checkpoint folder and from the final model file.

Usage: cli_layouts.py BUILD_DIR. Exits non-zero on any mismatch.
"""
import json
import os
import subprocess
import sys
import tempfile

build = sys.argv[1]
fivefold = os.path.join(build, "fivefold")
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")

tmp = tempfile.mkdtemp(prefix="fivefold_cli_")
corpus = os.path.join(tmp, "corpus.txt")
with open(corpus, "w") as f:
    for i in range(400):
        f.write("paragraph %d: the quick brown fox jumps over the lazy dog %d times.\n\n" % (i, i * 7 % 13))

common = ["train", "--data_path", corpus, "--tokenizer_type", "byte", "--vocab_size", "512", "--d_model", "32",
          "--num_layers", "4", "--num_heads", "4", "--num_kv_heads", "2", "--seq_len", "32", "--num_experts", "4",
          "--moe_ffn_hidden", "32", "--micro_batch", "2", "--eval_interval", "0", "--eval_samples",
          "2", "--peak_tflops", "1", "--split", "90,10,0"]


def run(ranks, extra, out, base=None):
    if "--steps" not in extra:
        extra = extra + ["--steps", "4"]
    if "--out_dir" not in extra:
        extra = extra + ["--out_dir", out]
    cmd = ([] if ranks == 1 else ["mpirun", "--oversubscribe", "-np", str(ranks)]) + [fivefold] + (base or common) + extra
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:])
        raise SystemExit("failed: " + " ".join(cmd))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


reference = run(1, ["--grad_accum", "4"], os.path.join(tmp, "one"))
layouts = {
    "DP 2 x EP 2, accumulate 2": (2, ["--ep", "2", "--grad_accum", "2"]),
    "TP 2 + SP x PP 2, accumulate 4": (4, ["--tp", "2", "--sequence_parallel", "true", "--etp", "1", "--pp", "2",
                                           "--grad_accum", "4"]),
    "CP 2 x DP 2, distributed optimizer": (4, ["--cp", "2", "--grad_accum", "2", "--distributed", "true"]),
}
failures = checks = 0
for name, (ranks, extra) in layouts.items():
    got = run(ranks, extra, os.path.join(tmp, name.replace(" ", "_")))
    ok = len(got) == len(reference) and all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(got, reference))
    print("%-40s %s %s" % (name, "ok" if ok else "MISMATCH", got))
    failures += not ok
    checks += 1
print("%-40s    %s" % ("reference (1 process)", reference))


# metrics.jsonl's expert_load (each MoE layer's share per expert over the global batch) is the
# same under every layout. Shares are integer counts over the same number of slots (tokens x
# top-k), so they agree to the bit unless a token's router scores tie within rounding and one
# routing choice flips: that moves 1/slots from one expert to another, allowed once per layer and
# step (a summed difference of at most 2/slots).
def expert_loads(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["expert_load"] for line in f]
ref_cfg = json.load(open(os.path.join(tmp, "one", "run_config.json")))
slots = 4 * 2 * 32 * ref_cfg["model"]["moe_top_k"]  # grad_accum x micro_batch x seq_len x top-k
ref_load = expert_loads(os.path.join(tmp, "one"))
for name in layouts:
    got = expert_loads(os.path.join(tmp, name.replace(" ", "_")))
    worst = max(sum(abs(a - b) for a, b in zip(gl, rl)) for gs, rs in zip(got, ref_load) for gl, rl in zip(gs, rs))
    ok = len(got) == len(ref_load) and all(len(g) == len(r) for g, r in zip(got, ref_load)) and worst <= 2 / slots
    print("%-40s %s (largest summed difference %.3g, allowed %.3g)" % ("expert_load, " + name, "ok" if ok else "MISMATCH",
                                                                       worst, 2 / slots))
    failures += not ok
    checks += 1

# Stop after 2 steps under DP 2 x EP 2, resume under TP 2 x PP 2 (4 ranks).
first = os.path.join(tmp, "first")
run(2, ["--ep", "2", "--grad_accum", "2", "--save_interval", "2", "--steps", "2"], first)
# Resuming it in one process without a layout: the checkpoint's EP 2 does not fit, and the error
# says that the layout came from the checkpoint and which flags set this job's.
r = subprocess.run([fivefold, "train", "--resume", os.path.join(first, "checkpoints"), "--out_dir",
                    os.path.join(tmp, "hint")], env=env, capture_output=True, text=True, timeout=120)
ok = r.returncode != 0 and "--resume starts from the checkpoint's config" in r.stderr and "--ep" in r.stderr
print("%-40s %s" % ("resume on fewer ranks names the layout", "ok" if ok else "MISSING " + r.stderr[-300:]))
failures += not ok
checks += 1
resumed = run(4, ["--resume", os.path.join(first, "checkpoints"), "--out_dir", first, "--tp", "2", "--sequence_parallel",
                  "true", "--etp", "1", "--pp", "2", "--ep", "1", "--grad_accum", "4", "--steps", "4"], first)
ok = all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(resumed, reference))
print("%-40s %s %s" % ("resume EP 2 -> TP 2 x PP 2", "ok" if ok else "MISMATCH", resumed))
failures += not ok
checks += 1
# generate reads a checkpoint written under any layout as well as a model file.
for model in (os.path.join(first, "checkpoints"), os.path.join(first, "model.safetensors")):
    g = subprocess.run([fivefold, "generate", "--model", model, "--prompt", "paragraph", "--tokens", "8",
                        "--temperature", "0"], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    ok = g.returncode == 0 and g.stdout.startswith("paragraph")
    print("%-40s %s %r" % ("generate from " + os.path.basename(model), "ok" if ok else "FAILED", g.stdout[:60]))
    failures += not ok
    checks += 1

# Stopping an mpirun job: SIGUSR1 to mpirun reaches every rank, which save a checkpoint at the end
# of the step and exit 0 (SIGTERM / SIGINT to mpirun kill the ranks about a second later).
import signal
import time
stopped = os.path.join(tmp, "stopped")
os.makedirs(stopped)
with open(os.path.join(stopped, "log.txt"), "w") as log:
    job = subprocess.Popen(["mpirun", "--oversubscribe", "-np", "2", fivefold] + common +
                           ["--ep", "2", "--steps", "100000", "--out_dir", stopped], env=env, stdout=log, stderr=log)
    metrics = os.path.join(stopped, "metrics.jsonl")
    t0 = time.time()
    while job.poll() is None and time.time() - t0 < 120 and (
            not os.path.exists(metrics) or sum(1 for _ in open(metrics)) < 3):
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    rc = job.wait(timeout=120)
text = open(os.path.join(stopped, "log.txt")).read()
latest = os.path.join(stopped, "checkpoints", "latest")
ok = rc == 0 and "stopped by a signal" in text and os.path.exists(latest)
print("%-40s %s %s" % ("SIGUSR1 to mpirun saves a checkpoint", "ok" if ok else "FAILED",
                       open(latest).read().strip() if os.path.exists(latest) else text[-600:]))
failures += not ok
checks += 1

# `fivefold align rm` and `align dpo` (from the model trained above, reference = that model) give
# the same losses under DP 2, TP 2 + SP and PP 2 as in one process.
pairs = os.path.join(tmp, "pairs.jsonl")
with open(pairs, "w") as f:
    for i in range(64):
        f.write(json.dumps({"prompt": "paragraph %d:" % i, "chosen": " the quick brown fox", "rejected": " a lazy dog"}) + "\n")
base = os.path.join(first, "model.safetensors")
for recipe in ("rm", "dpo"):
    def align(ranks, extra, out):
        cmd = ([] if ranks == 1 else ["mpirun", "--oversubscribe", "-np", str(ranks)]) + [
            fivefold, "align", recipe, "--init_from", base, "--data_path", pairs, "--tokenizer_type", "byte",
            "--micro_batch", "2", "--steps", "3", "--eval_interval", "0", "--eval_samples", "4", "--split", "90,10,0",
            "--peak_tflops", "1", "--out_dir", out] + extra
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:])
            raise SystemExit("failed: " + " ".join(cmd))
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return [json.loads(line)["loss"] for line in f]
    want = align(1, ["--grad_accum", "2"], os.path.join(tmp, recipe + "-one"))
    for name, (ranks, extra) in {"DP 2": (2, []), "TP 2 + SP": (2, ["--tp", "2", "--sequence_parallel", "true", "--grad_accum", "2"]),
                                 "PP 2": (2, ["--pp", "2", "--grad_accum", "2"]),
                                 "EP 2": (2, ["--ep", "2", "--etp", "1"])}.items():
        got = align(ranks, extra, os.path.join(tmp, recipe + "-" + name.replace(" ", "_")))
        ok = len(got) == len(want) and all(abs(a - b) <= 1e-4 * abs(b) + 1e-6 for a, b in zip(got, want))
        print("%-40s %s %s" % ("align %s, %s" % (recipe, name), "ok" if ok else "MISMATCH", got))
        failures += not ok
        checks += 1
    print("%-40s    %s" % ("align %s, 1 process" % recipe, want))

# `fivefold align ppo` (the SFT model above as the actor, the reward model just trained, its
# pairs' prompts) gives the same per-iteration rewards and losses under DP 2, TP 2 + SP and PP 2
# as in one process (top-k 1 sampling: the rollouts do not depend on the last bits of the
# logits), and a run stopped after 2 iterations resumes under another layout to the same numbers
# (a constant lr: the schedule does not depend on the run's length).
def ppo(ranks, extra, out, steps="4"):
    cmd = ([] if ranks == 1 else ["mpirun", "--oversubscribe", "-np", str(ranks)]) + [
        fivefold, "align", "ppo", "--init_from", base, "--reward_model", os.path.join(tmp, "rm-one", "model.safetensors"),
        "--data_path", pairs, "--steps", steps, "--ppo_rollout_prompts", "8", "--micro_batch", "2",
        "--ppo_max_new_tokens", "6", "--ppo_top_k", "1", "--ppo_only_ended", "false", "--lr", "1e-3", "--lr_decay", "constant", "--warmup_steps", "0",
        "--ppo_critic_lr", "1e-3", "--peak_tflops", "1", "--out_dir", out] + extra
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:])
        raise SystemExit("failed: " + " ".join(cmd))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [(m["reward"], m["actor_loss"], m["critic_loss"]) for m in map(json.loads, f)]
def same_ppo(got, want):
    return len(got) == len(want) and all(abs(a - b) <= 1e-4 * abs(b) + 1e-6 for g, w in zip(got, want)
                                         for a, b in zip(g, w))
ppo_want = ppo(1, ["--grad_accum", "2"], os.path.join(tmp, "ppo-one"))
for name, (ranks, extra) in {"DP 2": (2, []), "TP 2 + SP": (2, ["--tp", "2", "--sequence_parallel", "true", "--grad_accum", "2"]),
                             "PP 2": (2, ["--pp", "2", "--grad_accum", "2"])}.items():
    got = ppo(ranks, extra, os.path.join(tmp, "ppo-" + name.replace(" ", "_")))
    ok = same_ppo(got, ppo_want)
    print("%-40s %s %s" % ("align ppo, " + name, "ok" if ok else "MISMATCH", [round(x[0], 4) for x in got]))
    failures += not ok
    checks += 1
print("%-40s    %s" % ("align ppo, 1 process", [tuple(round(v, 4) for v in x) for x in ppo_want]))
# Split placement: the critic and the reward model on their own ranks with their own layout, the
# rollouts, log-probs, values and scores passed between the two groups, equal to one process too.
for name, (ranks, extra) in {"split 1 + 1": (2, ["--ppo_critic_ranks", "1", "--grad_accum", "2"]),
                             "split DP 2 + 1": (3, ["--ppo_critic_ranks", "1"]),
                             "split PP 2 + TP 2": (4, ["--ppo_critic_ranks", "2", "--ppo_critic_tp", "2", "--sequence_parallel", "true", "--pp", "2",
                                                       "--grad_accum", "2"])}.items():
    got = ppo(ranks, extra, os.path.join(tmp, "ppo-" + name.replace(" ", "_").replace("+", "")))
    ok = same_ppo(got, ppo_want)
    print("%-40s %s %s" % ("align ppo, " + name, "ok" if ok else "MISMATCH", [round(x[0], 4) for x in got]))
    failures += not ok
    checks += 1
ppo(1, ["--grad_accum", "2", "--save_interval", "2"], os.path.join(tmp, "ppo-first"), steps="2")
got = ppo(2, ["--resume", os.path.join(tmp, "ppo-first", "checkpoints"), "--tp", "2", "--sequence_parallel", "true",
                "--grad_accum", "2"],
          os.path.join(tmp, "ppo-first"))
ok = same_ppo(got, ppo_want)
print("%-40s %s %s" % ("align ppo resumed under TP 2", "ok" if ok else "MISMATCH", [round(x[0], 4) for x in got]))
failures += not ok
checks += 1
# A split run saves each model from its own ranks into one checkpoint; it resumes shared, and back
# (a resumed run takes the checkpoint's config, so the flags of the new placement are given).
ppo(2, ["--ppo_critic_ranks", "1", "--grad_accum", "2", "--save_interval", "2"], os.path.join(tmp, "ppo-split-first"), steps="2")
got = ppo(2, ["--resume", os.path.join(tmp, "ppo-split-first", "checkpoints"), "--ppo_critic_ranks", "0",
              "--grad_accum", "1"], os.path.join(tmp, "ppo-split-first"))  # flags over the checkpoint's config
ok = same_ppo(got, ppo_want)
print("%-40s %s %s" % ("align ppo split, resumed under DP 2", "ok" if ok else "MISMATCH", [round(x[0], 4) for x in got]))
failures += not ok
checks += 1
ppo(1, ["--grad_accum", "2", "--save_interval", "2"], os.path.join(tmp, "ppo-shared-first"), steps="2")
got = ppo(3, ["--resume", os.path.join(tmp, "ppo-shared-first", "checkpoints"), "--ppo_critic_ranks", "1",
              "--grad_accum", "1"],
          os.path.join(tmp, "ppo-shared-first"))
ok = same_ppo(got, ppo_want)
print("%-40s %s %s" % ("align ppo resumed split DP 2 + 1", "ok" if ok else "MISMATCH", [round(x[0], 4) for x in got]))
failures += not ok
checks += 1

# Upcycling: `fivefold upcycle` (offline, one process) and then training from the MoE file gives
# the losses of training with --upcycle_experts from the dense file directly (online), in one
# process and under EP 2 with each rank building only its experts.
dense_dir = os.path.join(tmp, "dense")
dense_common = [a for i, a in enumerate(common) if a not in ("--num_experts", "--moe_ffn_hidden") and
                common[i - 1] not in ("--num_experts", "--moe_ffn_hidden")]
subprocess.run([fivefold] + dense_common + ["--num_experts", "0", "--ffn_hidden", "64", "--steps", "2", "--out_dir",
               dense_dir], env=env, check=True, capture_output=True, timeout=300)
dense_file = os.path.join(dense_dir, "model.safetensors")
# (the shared flags' --num_experts 4 --moe_ffn_hidden 32 are what E 4, G 2 make of ffn_hidden 64)
moe_file = os.path.join(tmp, "moe.safetensors")
up = ["--upcycle_experts", "4", "--upcycle_top_k", "2", "--upcycle_granularity", "2"]
r = subprocess.run([fivefold, "upcycle", "--init_from", dense_file, "--out", moe_file] + up, env=env,
                   capture_output=True, text=True, timeout=120)
print(r.stdout.strip()[-300:])
offline = run(1, ["--init_from", moe_file, "--grad_accum", "2"], os.path.join(tmp, "from-moe"))
for name, (ranks, extra) in {"online, 1 process": (1, ["--grad_accum", "2"]), "online, EP 2": (2, ["--ep", "2"])}.items():
    got = run(ranks, ["--init_from", dense_file] + up + extra, os.path.join(tmp, "up-" + name.replace(" ", "_")),
              dense_common)
    ok = r.returncode == 0 and all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(got, offline))
    print("%-40s %s %s" % ("upcycle " + name, "ok" if ok else "MISMATCH", got))
    failures += not ok
    checks += 1
print("%-40s    %s" % ("upcycle offline, then train", offline))

# A hybrid Mamba2 model with an MoE layer (Nemotron-H style: no RoPE, squared ReLU) trains to the
# same losses under TP 2 + SP x PP 2, CP 2 (the Mamba all-to-all, ring attention) with the
# distributed optimizer, and DP 2 x EP 2; its model file generates (the conv and SSM states).
hybrid = ["--layer_pattern", "M*ME", "--mamba_num_heads", "4", "--mamba_head_dim", "8", "--mamba_groups", "2",
          "--mamba_state", "8", "--mamba_chunk", "8", "--position_embedding", "none", "--activation", "squared_relu"]
hybrid_want = run(1, hybrid + ["--grad_accum", "4"], os.path.join(tmp, "hybrid-one"))
hybrid_layouts = {
    "hybrid TP 2 + SP x PP 2": (4, ["--tp", "2", "--sequence_parallel", "true", "--etp", "1", "--pp", "2",
                                    "--grad_accum", "4"]),
    "hybrid CP 2 x DP 2, distributed": (4, ["--cp", "2", "--grad_accum", "2", "--distributed", "true"]),
    "hybrid DP 2 x EP 2": (2, ["--ep", "2", "--grad_accum", "2"]),
}
for name, (ranks, extra) in hybrid_layouts.items():
    got = run(ranks, hybrid + extra, os.path.join(tmp, name.replace(" ", "_").replace(",", "")))
    ok = len(got) == len(hybrid_want) and all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(got, hybrid_want))
    print("%-40s %s %s" % (name, "ok" if ok else "MISMATCH", got))
    failures += not ok
    checks += 1
print("%-40s    %s" % ("hybrid, 1 process", hybrid_want))
# Stopped under TP 2 + SP (Mamba's per-head vectors sliced over TP), resumed under CP 2 x DP 2.
hfirst = os.path.join(tmp, "hybrid-first")
run(2, hybrid + ["--tp", "2", "--sequence_parallel", "true", "--etp", "1", "--grad_accum", "4", "--save_interval", "2",
                 "--steps", "2"], hfirst)
hresumed = run(4, hybrid + ["--resume", os.path.join(hfirst, "checkpoints"), "--out_dir", hfirst, "--tp", "1",
                            "--sequence_parallel", "false", "--cp", "2", "--grad_accum", "2", "--steps", "4"], hfirst)
ok = all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(hresumed, hybrid_want))
print("%-40s %s %s" % ("hybrid resume TP 2 -> CP 2 x DP 2", "ok" if ok else "MISMATCH", hresumed))
failures += not ok
checks += 1
g = subprocess.run([fivefold, "generate", "--model", os.path.join(tmp, "hybrid-one", "model.safetensors"), "--prompt",
                    "paragraph", "--tokens", "8", "--temperature", "0"], env=env, capture_output=True, encoding="utf-8",
                   errors="replace", timeout=120)
ok = g.returncode == 0 and g.stdout.startswith("paragraph")
print("%-40s %s %r" % ("generate from the hybrid", "ok" if ok else "FAILED", g.stdout[:60]))
failures += not ok
checks += 1

# `fivefold prune` of that hybrid (2 of its 4 experts kept, 16 of their 32 neurons): the calibration under TP 2 + SP, CP 2,
# EP 2, pipeline stages (PP 2, PP 2 x EP 2, PP 2 x TP 2 + SP) gives the scores and keep sets of one
# process, so the pruned model file is byte for byte the one process's (it is slices of the
# source). Under PP 2 alone the scores are the one process's to the bit (each stage runs its layers
# with the same arithmetic; the other stages add zeros); elsewhere fp32 activations in other
# summation orders: relative 1e-4.
def prune(ranks, extra, out):
    cmd = ([] if ranks == 1 else ["mpirun", "--oversubscribe", "-np", str(ranks)]) + [
        fivefold, "prune", "--model", os.path.join(tmp, "hybrid-one", "model.safetensors"), "--data", corpus,
        "--out", out, "--calib_samples", "8", "--micro_batch", "2", "--target_d_model", "24",
        "--target_mamba_num_heads", "2", "--target_mamba_head_dim", "6", "--target_num_experts", "2",
        "--target_moe_ffn_hidden", "16"] + extra
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:])
        raise SystemExit("failed: " + " ".join(cmd))
    return json.load(open(out + ".scores.json"))
def all_scores(j):
    return [(k, v) for part in ("scores", "expert_mean_output_norm") for k in sorted(j[part])
            for v in j[part][k]] + sorted(j["depth_1_minus_cos"].items())
pruned_one = os.path.join(tmp, "pruned-one.safetensors")
prune_want = prune(1, [], pruned_one)
for name, (ranks, extra, exact) in {
        "prune under TP 2 + SP": (2, ["--tp", "2", "--sequence_parallel", "true"], False),
        "prune under CP 2": (2, ["--cp", "2"], False),
        "prune under EP 2": (2, ["--ep", "2"], False),
        "prune under PP 2": (2, ["--pp", "2"], True),
        "prune under PP 2 x EP 2": (4, ["--pp", "2", "--ep", "2"], False),
        "prune under PP 2 x TP 2 + SP": (4, ["--pp", "2", "--tp", "2", "--sequence_parallel", "true", "--etp", "1"],
                                         False)}.items():
    out = os.path.join(tmp, name.replace(" ", "_").replace("+", "") + ".safetensors")
    got = prune(ranks, extra, out)
    pairs = list(zip(all_scores(got), all_scores(prune_want)))
    same = len(pairs) == len(all_scores(prune_want)) and all(
        ka == kb and (a == b if exact else abs(a - b) <= 1e-4 * max(abs(b), 1e-6)) for (ka, a), (kb, b) in pairs)
    kept = all(got[k] == prune_want[k] for k in ("kept_embedding", "kept_layers", "kept_experts", "to_pattern"))
    same_file = open(out, "rb").read() == open(pruned_one, "rb").read()
    ok = same and kept and same_file and len(prune_want["kept_experts"]) == 1
    print("%-40s %s%s" % (name, "ok" if ok else "MISMATCH", " (bitwise)" if exact and ok else ""))
    failures += not ok
    checks += 1
g = subprocess.run([fivefold, "generate", "--model", os.path.join(tmp, "pruned-one.safetensors"), "--prompt", "paragraph",
                    "--tokens", "4", "--temperature", "0"], env=env, capture_output=True, encoding="utf-8",
                   errors="replace", timeout=120)
ok = g.returncode == 0 and g.stdout.startswith("paragraph")
print("%-40s %s %r" % ("generate from the pruned hybrid", "ok" if ok else "FAILED", g.stdout[:40]))
failures += not ok
checks += 1
# Calibration data too short for one window is one clear error, printed once under mpirun.
short = os.path.join(tmp, "short.txt")
with open(short, "w") as f:
    f.write("too short\n")
r = subprocess.run(["mpirun", "--oversubscribe", "-np", "2", fivefold, "prune", "--model",
                    os.path.join(tmp, "hybrid-one", "model.safetensors"), "--data", short, "--part", "all", "--out",
                    os.path.join(tmp, "never.safetensors"), "--target_d_model", "24"], env=env, capture_output=True,
                   text=True, timeout=120)
said = (r.stdout + r.stderr).count("fewer than seq_len + 1")  # no window of the model's length
ok = r.returncode != 0 and said == 1 and not os.path.exists(os.path.join(tmp, "never.safetensors"))
print("%-40s %s (%d times, rc %d)" % ("prune: empty calibration data", "ok" if ok else "FAILED", said, r.returncode))
failures += not ok
checks += 1

# Distillation of the pruned hybrid from the hybrid it was pruned from (narrower student, the
# teacher's layers over the same stages) gives the losses of one process: with the hidden cosine
# (through the learned projection, which the model file leaves out) under TP 2 + SP x PP 2, and
# with the LM loss kept (KD rescaled per micro-batch) under DP 2 x PP 2.
kd_common = ["train", "--data_path", corpus, "--init_from", os.path.join(tmp, "pruned-one.safetensors"), "--teacher",
             os.path.join(tmp, "hybrid-one", "model.safetensors"), "--micro_batch", "2", "--eval_interval", "0",
             "--eval_samples", "2", "--peak_tflops", "1", "--split", "90,10,0"]
for name, loss, (ranks, extra) in (
        ("distil + cosine, TP 2 + SP x PP 2", ["--kd_hidden_cosine", "true"],
         (4, ["--tp", "2", "--sequence_parallel", "true", "--etp", "1", "--pp", "2", "--grad_accum", "4"])),
        ("distil + LM loss, DP 2 x PP 2", ["--kd_lm_loss", "true"], (4, ["--pp", "2", "--grad_accum", "2"]))):
    want_dir = os.path.join(tmp, "kd-one" + loss[0])
    want = run(1, loss + ["--grad_accum", "4"], want_dir, kd_common)
    got = run(ranks, loss + extra, os.path.join(tmp, name.replace(" ", "_").replace(",", "")), kd_common)
    ok = len(got) == len(want) and all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(got, want))
    print("%-40s %s %s" % (name, "ok" if ok else "MISMATCH", got))
    failures += not ok
    checks += 1
    if "--kd_hidden_cosine" in loss:  # the projection trained beside the student stays out of its model file
        g = subprocess.run([fivefold, "generate", "--model", os.path.join(want_dir, "model.safetensors"), "--prompt",
                            "paragraph", "--tokens", "4", "--temperature", "0"], env=env, capture_output=True,
                           encoding="utf-8", errors="replace", timeout=120)
        with open(os.path.join(want_dir, "model.safetensors"), "rb") as f:
            header = f.read(8 + int.from_bytes(f.read(8), "little"))
        ok = g.returncode == 0 and b"distill.projection" not in header
        print("%-40s %s %r" % ("distilled model file, no projection", "ok" if ok else "FAILED", g.stdout[:40]))
        failures += not ok
        checks += 1
        # Stopped after 2 steps in one process, resumed under TP 2 + SP x PP 2: the checkpoint
        # carries the projection and its moments.
        kfirst = os.path.join(tmp, "kd-first")
        run(1, loss + ["--grad_accum", "4", "--save_interval", "2", "--steps", "2"], kfirst, kd_common)
        kresumed = run(4, ["--resume", os.path.join(kfirst, "checkpoints"), "--out_dir", kfirst] + extra, kfirst,
                       ["train"])
        ok = len(kresumed) == len(want) and all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(kresumed, want))
        print("%-40s %s %s" % ("distil + cosine resumed under TP2 x PP2", "ok" if ok else "MISMATCH", kresumed))
        failures += not ok
        checks += 1

# `fivefold search` of the hybrid (prune candidates within a budget, distil each briefly) ranks the
# same candidates with the same losses under TP 2 + SP as in one process (decode speed aside).
def search(ranks, extra, out):
    cmd = ([] if ranks == 1 else ["mpirun", "--oversubscribe", "-np", str(ranks)]) + [
        fivefold, "search", "--init_from", os.path.join(tmp, "hybrid-one", "model.safetensors"), "--data_path", corpus,
        "--target_params", "30000", "--search_tolerance", "0.5", "--search_candidates", "3", "--steps", "3",
        "--micro_batch", "2", "--grad_accum", "2", "--eval_samples", "4", "--split", "90,10,0", "--calib_samples", "8",
        "--decode_tokens", "4", "--decode_batch", "2", "--peak_tflops", "1", "--out_dir", out] + extra
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:])
        raise SystemExit("failed: " + " ".join(cmd))
    return sorted((row["name"].split("/")[-1], row["parameters"], row["loss"]) for row in
                  json.load(open(os.path.join(out, "search.json"))))
search_want = search(1, [], os.path.join(tmp, "search-one"))
got = search(2, ["--tp", "2", "--sequence_parallel", "true"], os.path.join(tmp, "search-tp"))
ok = len(got) == len(search_want) == 4 and all(a[:2] == b[:2] and abs(a[2] - b[2]) <= 1e-4 * abs(b[2])
                                               for a, b in zip(got, search_want))
print("%-40s %s %s" % ("search under TP 2 + SP", "ok" if ok else "MISMATCH", got))
failures += not ok
checks += 1

# An error every rank meets alike (a missing checkpoint, a bad command line) is printed once, not
# once per rank, and the job fails.
for what, extra, needle in (("missing --resume folder", ["--resume", os.path.join(tmp, "nothing")], "does not exist"),
                            ("a flag given twice", ["--seed", "1", "--seed", "2"], "--seed")):
    r = subprocess.run(["mpirun", "--oversubscribe", "-np", "3", fivefold] + common + extra + ["--out_dir", os.path.join(tmp, "err")],
                       env=env, capture_output=True, text=True, timeout=120)
    said = (r.stdout + r.stderr).count(needle)
    ok = r.returncode != 0 and said == 1
    print("%-40s %s (%d times, rc %d)" % ("printed once: " + what, "ok" if ok else "FAILED", said, r.returncode))
    failures += not ok
    checks += 1
print("%d passed, %d failed" % (checks - failures, failures))
sys.exit(1 if failures else 0)
