"""`fivefold bench --peer` end to end on a tiny model: fivefold's measurement, then the PyTorch peer
(bench/torch_peer.py) on the same config, and the `compare:` line with both tokens/s and their
ratio; fp32 on the MoE model and on a hybrid Mamba2 one (nemotron-h-small's pattern), bf16
(autocast in the peer) on a dense one. Then the errors:
a Python that does not exist, a Python without PyTorch, and --peer under mpirun with 2 ranks,
each a clear message and a non-zero exit, never a crash.

Usage: test_bench_peer.py FIVEFOLD_BINARY. Exits non-zero on any failure.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

fivefold = sys.argv[1]
env = dict(os.environ, OMP_NUM_THREADS="2", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
short = ["--micro_batch", "1", "--seq_len", "32", "--bench_steps", "1", "--warmup", "0", "--peak_tflops", "1"]
tiny = ["bench", "--model_preset", "moe-tiny"] + short
failures = []


def run(cmd):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def check(name, ok, out=""):
    print("%-60s %s" % (name, "ok" if ok else "FAILED"))
    if not ok:
        failures.append(name)
        print(out[-3000:])


compare = re.compile(r"^compare: fivefold ([0-9.]+) tokens/s \((fp32|bf16), peak ([0-9.]+) GiB\), "
                     r"PyTorch [0-9.]+ ([0-9.]+) tokens/s \((fp32|bf16 autocast), peak ([0-9.]+) GiB\), "
                     r"ratio ([0-9.]+)x \(of the median steps\)$", re.M)

for name, cmd, ff_precision, peer_precision, pattern in [
        ("moe-tiny fp32", tiny, "fp32", "fp32", "*E*E*E*E"),
        ("dense bf16", tiny + ["--num_experts", "0", "--ffn_hidden", "256", "--precision", "bf16"], "bf16",
         "bf16 autocast", "*-*-*-*-"),
        ("nemotron-h-small (Mamba2 hybrid) fp32", ["bench", "--model_preset", "nemotron-h-small"] + short, "fp32", "fp32",
         "M-M-M*-M-")]:
    code, out, err = run([fivefold] + cmd + ["--peer"])
    m = compare.search(out)
    ok = code == 0 and m is not None
    if ok:
        ff, peer, ratio = float(m.group(1)), float(m.group(4)), float(m.group(7))
        ok = (ff > 0 and peer > 0 and float(m.group(3)) > 0 and float(m.group(6)) > 0
              and m.group(2) == ff_precision and m.group(5) == peer_precision
              and abs(ratio - ff / peer) <= 0.01 * ratio + 0.01)
    # The peer built the same model: its pattern, 1 x 1 x 32 tokens per step, and its result line.
    ok = ok and ("peer: torch_peer: %s |" % pattern) in out and "1 x 1 x 32 tokens per step" in out
    ok = ok and re.search(r"^peer: result: [0-9.]+ tokens/s \| peak memory [0-9.]+ GiB \| PyTorch ", out, re.M)
    # Both sides report medians; the peer warmed up until its step time settled.
    ok = ok and "(medians of 1 steps)" in out and re.search(r"^peer:   warm-up: [0-9]+ steps", out, re.M)
    check("bench --peer, " + name, bool(ok), out + err)

# A Python that does not exist: refused before the measurement.
code, out, err = run([fivefold] + tiny + ["--peer", "--peer_python", "/nonexistent"])
check("bench --peer --peer_python /nonexistent",
      code != 0 and "--peer_python /nonexistent" in err and "compare:" not in out and "result:" not in out,
      out + err)

# A Python without PyTorch: fivefold's result, the peer's output, then the error naming PyTorch.
tmp = tempfile.mkdtemp(prefix="fivefold_peer_")
try:
    fake = os.path.join(tmp, "python3")
    with open(fake, "w") as f:
        f.write("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    os.chmod(fake, 0o755)
    code, out, err = run([fivefold] + tiny + ["--peer", "--peer_python", fake])
    check("bench --peer with a Python without PyTorch",
          code != 0 and "PyTorch is not installed for " + fake in err and "peer: ModuleNotFoundError" in out
          and "compare:" not in out and re.search(r"^result: [0-9.]+ tokens/s", out, re.M), out + err)
finally:
    shutil.rmtree(tmp)

# --peer is for one process.
mpirun = shutil.which("mpirun")
if mpirun:
    code, out, err = run([mpirun, "--oversubscribe", "-np", "2", "-x", "OMP_NUM_THREADS=1", fivefold] + tiny + ["--peer"])
    check("bench --peer under mpirun -np 2", code != 0 and "this job has 2 ranks" in out + err, out + err)

if failures:
    sys.exit("failed: " + "; ".join(failures))
