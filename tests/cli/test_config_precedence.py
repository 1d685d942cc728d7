"""The command line's config resolution, through the binary: defaults, then the preset (the file's
train.model_preset, or --model_preset), then the config file's fields, then flags; and values a
field cannot hold (a negative seed) are refused, naming the flag or key.

Usage: test_config_precedence.py FIVEFOLD. Exits non-zero on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

fivefold = sys.argv[1]
failures = []


def resolved(*args):
    r = subprocess.run([fivefold, "train", *args, "--print_config"], capture_output=True, text=True, timeout=60)
    return r.returncode, (json.loads(r.stdout) if r.returncode == 0 else r.stdout + r.stderr)


def check(what, ok, detail=""):
    print("%-70s %s" % (what, "ok" if ok else "FAILED " + str(detail)))
    if not ok:
        failures.append(what)


with tempfile.TemporaryDirectory() as tmp:
    cfg = os.path.join(tmp, "run.json")
    with open(cfg, "w") as f:
        json.dump({"model": {"d_model": 96, "num_heads": 4}, "train": {"model_preset": "moe-small", "steps": 7}}, f)
    rc, c = resolved("--config", cfg)
    check("file: its preset, then its model fields", rc == 0 and c["model"]["d_model"] == 96 and
          c["model"]["num_experts"] == 8 and c["train"]["steps"] == 7, c)
    rc, c = resolved("--config", cfg, "--model_preset", "llama-small")
    check("--model_preset replaces the file's preset; the file's model fields stay",
          rc == 0 and c["model"]["d_model"] == 96 and c["model"]["num_experts"] == 0 and c["train"]["steps"] == 7, c)
    rc, c = resolved("--config", cfg, "--model_preset", "llama-small", "--d_model", "64")
    check("flags come last", rc == 0 and c["model"]["d_model"] == 64, c)
    rc, out = resolved("--seed", "-1")
    check("--seed -1 is refused", rc != 0 and "--seed -1: must be a non-negative integer" in out, out)
    with open(cfg, "w") as f:
        json.dump({"train": {"seed": -3}}, f)
    rc, out = resolved("--config", cfg)
    check("train.seed = -3 in a file is refused", rc != 0 and "train.seed = -3: must be a non-negative integer" in out,
          out)

# --help shows each flag's type and an enum's choices; a value of the wrong type names its flag;
# --version names the version and the build's libraries.
h = subprocess.run([fivefold, "train", "--help"], capture_output=True, text=True, timeout=60).stdout
for want in ("--lr FLOAT", "--seed UINT", "--d_model INT", "--precision fp32|bf16", "--tie_embeddings BOOL",
             "--data_path TEXT", "--tp INT", "--moe_dispatcher alltoall|allgather|alltoall_dedup"):
    check("train --help shows " + want, want in h, h[:400])
rc, out = resolved("--lr", "fast")
check("--lr fast is refused naming the flag", rc != 0 and "--lr fast: not a valid number" in out, out)
v = subprocess.run([fivefold, "--version"], capture_output=True, text=True, timeout=60).stdout
check("--version", v.startswith("fivefold ") and "oneDNN" in v and "MPI" in v and "CUDA" in v, v)

# docs/config.md is the output of `fivefold config-reference`: stale when a field changed.
ref = subprocess.run([fivefold, "config-reference"], capture_output=True, text=True, timeout=60).stdout
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "config.md")) as f:
    committed = f.read()
check("docs/config.md is current (else: fivefold config-reference > docs/config.md)", ref == committed,
      "differs" if ref else "no output")

# Under mpirun every rank finds the same bad flag: the message is printed once, not once per rank.
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
r = subprocess.run(["mpirun", "--oversubscribe", "-np", "3", fivefold, "train", "--seed", "-1"], env=env,
                   capture_output=True, text=True, timeout=120)
n = (r.stdout + r.stderr).count("--seed -1: must be a non-negative integer")
check("under mpirun -np 3 the error is printed once", r.returncode != 0 and n == 1, "%d times" % n)

print("%d failed" % len(failures))
sys.exit(1 if failures else 0)
