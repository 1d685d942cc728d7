"""The alignment recipes end to end through the binary, as a user runs them, on a tiny model:
SteerLM's steps in order (attribute model, annotation, attribute-conditioned SFT, generation with
a requested attribute string) and SPIN (two iterations, then the same command again finds them
done); and the errors of misuse. Checks what each step leaves behind, not the quality of the
results (the effects are docs/results.md's).

Usage: test_align_recipes.py FIVEFOLD. Exits non-zero on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

fivefold = sys.argv[1]
failures = []


def check(what, ok, detail=""):
    print("%-60s %s" % (what, "ok" if ok else "FAILED " + str(detail)[-1500:]))
    if not ok:
        failures.append(what)


def run(*args):
    return subprocess.run([fivefold, *args], capture_output=True, text=True, timeout=300)


with tempfile.TemporaryDirectory() as tmp:
    def path(name):
        return os.path.join(tmp, name)

    with open(path("corpus.txt"), "w") as f:
        for i in range(200):
            f.write("line %d: good things come to those who wait.\n\n" % i)
    small = ["--tokenizer_type", "byte", "--vocab_size", "512", "--d_model", "32", "--num_layers", "2",
             "--num_heads", "4", "--num_kv_heads", "2", "--num_experts", "0", "--peak_tflops", "1"]
    r = run("train", "--data_path", path("corpus.txt"), "--seq_len", "32", "--steps", "5", "--micro_batch", "2",
            "--eval_samples", "2", "--out_dir", path("base"), *small)
    check("a base model", r.returncode == 0, r.stdout + r.stderr)
    base = path("base/model.safetensors")
    with open(path("rated.jsonl"), "w") as f, open(path("plain.jsonl"), "w") as g:
        for i in range(40):
            n = i % 5
            rec = {"prompt": "Rate %d:" % i, "response": " " + " ".join(["good"] * n + ["meh"] * (4 - n))}
            g.write(json.dumps(rec) + "\n")
            rec.update({"quality": n, "humor": -100 if i % 2 else 4 - n})
            f.write(json.dumps(rec) + "\n")
    common = ["--micro_batch", "4", "--steps", "3", "--eval_samples", "4", "--split", "90,10,0", "--seq_len", "96",
              "--peak_tflops", "1"]
    r = run("align", "steerlm", "attribute-model", "--init_from", base, "--steerlm_attributes", "quality,humor",
            "--data_path", path("rated.jsonl"), "--out_dir", path("attr"), *common)
    check("steerlm 1: attribute model", r.returncode == 0 and "attribute data" in r.stdout, r.stdout + r.stderr)
    r = run("align", "steerlm", "annotate", "--model", path("attr/model.safetensors"), "--data_path",
            path("plain.jsonl"), "--output", path("annotated.jsonl"))
    recs = [json.loads(line) for line in open(path("annotated.jsonl"))] if r.returncode == 0 else []
    ok = len(recs) == 40 and all(sorted(x["attributes"]) == ["humor", "quality"] and
                                 all(isinstance(v, int) and 0 <= v <= 4 for v in x["attributes"].values()) for x in recs)
    check("steerlm 2: annotation, integers in [0, 4]", ok, r.stdout + r.stderr)
    # NeMo's headers and the attribute string take about 100 bytes: the sequences must hold them and the response.
    steer = [("160" if a == "96" else a) for a in common]
    r = run("align", "steerlm", "sft", "--init_from", base, "--steerlm_attributes", "quality,humor", "--data_path",
            path("annotated.jsonl"), "--out_dir", path("steer"), *steer)
    check("steerlm 3: attribute-conditioned SFT", r.returncode == 0 and "template nemo" in r.stdout, r.stdout + r.stderr)
    r = run("generate", "--model", path("steer/model.safetensors"), "--prompt", "Rate 1:", "--chat_template", "nemo",
            "--attributes", "quality:4,humor:0", "--tokens", "8", "--temperature", "0", "--output", "jsonl")
    check("steerlm 4: generation with an attribute string", r.returncode == 0 and '"prompt":"Rate 1:"' in r.stdout,
          r.stdout + r.stderr)
    r = run("generate", "--model", path("steer/model.safetensors"), "--prompt", "x", "--attributes", "quality:4")
    check("--attributes without the nemo template is refused", r.returncode != 0 and "nemo" in r.stderr, r.stderr)
    r = run("align", "steerlm", "sft", "--init_from", base, "--data_path", path("annotated.jsonl"))
    check("steerlm without --steerlm_attributes is refused", r.returncode != 0 and "steerlm_attributes" in r.stderr,
          r.stderr)

    spin = ["align", "spin", "--init_from", path("steer/model.safetensors"), "--data_path", path("plain.jsonl"),
            "--spin_iterations", "2", "--spin_max_new_tokens", "8", "--out_dir", path("spin"), "--chat_template", "nemo",
            *common]
    r = run(*spin)
    log = [json.loads(line) for line in open(path("spin/spin.jsonl"))] if r.returncode == 0 else []
    check("spin: two iterations", len(log) == 2 and os.path.exists(path("spin/model.safetensors")), r.stdout + r.stderr)
    r = run(*spin)
    check("spin: the same command again finds them done", r.returncode == 0 and r.stdout.count("done already") == 2,
          r.stdout + r.stderr)

    # PPO's misuse: each a clear error naming what to fix.
    def ppo(**over):
        flags = {"init_from": base, "data_path": path("plain.jsonl"), "steps": "1", "ppo_rollout_prompts": "4",
                 "micro_batch": "2", "ppo_max_new_tokens": "4", "out_dir": path("ppo"), "peak_tflops": "1",
                 "reward_model": base}
        flags.update(over)
        return run("align", "ppo", *[x for k, v in flags.items() for x in ("--" + k, v)])
    r = ppo()
    check("ppo: a reward model without a value head is refused", r.returncode != 0 and "align rm" in r.stderr, r.stderr)
    r = ppo(reward_model=path("attr/model.safetensors"))
    check("ppo: a reward model with two values is refused", r.returncode != 0 and "value_outputs = 1" in r.stderr,
          r.stderr)
    r = ppo(ppo_rollout_prompts="3")
    check("ppo: rollouts not in whole steps are refused", r.returncode != 0 and "multiple of" in r.stderr, r.stderr)
    r = ppo(ppo_max_new_tokens="28", seq_len="32")  # room for 3 prompt tokens; each prompt has 7 or more
    check("ppo: no prompt short enough is refused", r.returncode != 0 and "no prompt fits" in r.stderr, r.stderr)
    r = ppo(ppo_temperature="0")
    check("ppo: greedy rollouts are refused", r.returncode != 0 and "ppo_temperature" in r.stderr, r.stderr)
    r = ppo(ppo_critic_ranks="1")
    check("ppo: a critic group of every rank is refused", r.returncode != 0 and "leaves none for the actor" in r.stderr,
          r.stderr)
    # Two rank groups: the critic's replicas must split the actor's optimizer step; said once.
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
    r = subprocess.run(["mpirun", "--oversubscribe", "-np", "3", fivefold, "align", "ppo", "--init_from", base,
                        "--reward_model", base, "--data_path", path("plain.jsonl"),
                        "--steps", "1", "--ppo_rollout_prompts", "4", "--micro_batch", "2", "--ppo_max_new_tokens", "4",
                        "--out_dir", path("ppo-split"), "--peak_tflops", "1", "--ppo_critic_ranks", "2"],
                       capture_output=True, text=True, timeout=300, env=env)
    check("ppo: a critic group that cannot split a step is refused once",
          r.returncode != 0 and r.stderr.count("cannot split an optimizer step") == 1, r.stderr)
    # plan shows the memory of each of PPO's roles.
    r = run("plan", "--init_from", base, "--reward_model", path("attr/model.safetensors"), "--micro_batch", "2")
    ok = r.returncode == 0 and all(role in r.stdout for role in ("PPO roles", "actor", "critic", "reference",
                                                                  "reward model", "all roles"))
    check("plan: PPO's memory per role", ok, r.stdout + r.stderr)
    r = run("plan", "--init_from", base, "--reward_model", path("attr/model.safetensors"), "--micro_batch", "2",
            "--world", "4", "--ppo_critic_ranks", "2", "--ppo_critic_tp", "2", "--sequence_parallel", "true")
    ok = r.returncode == 0 and all(s in r.stdout for s in ("actor group", "critic group", "the last 2"))
    check("plan: PPO's memory per rank group when split", ok, r.stdout + r.stderr)

print("%d failed" % len(failures))
sys.exit(1 if failures else 0)
