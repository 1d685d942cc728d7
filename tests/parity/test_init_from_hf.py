"""A Hugging Face folder written by an independent PyTorch implementation (bench/torch_model.py):
fivefold's eval reads it and computes the loss PyTorch
computes on the same tokens, in one process and under mpirun with TP 2 and EP 2.

Usage: test_init_from_hf.py BUILD_DIR SOURCE_DIR. Exits non-zero on any mismatch.
Data: one document of random byte ids (an indexed dataset written here), so eval's windows are
the consecutive [i L, i L + L + 1) of it. Tolerance: PyTorch in float64, fivefold in fp32 over
~1,500 targets; the mean loss agrees to 1e-5 relative (fp32 rounding of logits of size ~1e0 and
of the log-sum-exp, averaged). A loss from misplaced weights differs by far more.
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

build, source = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(source, "bench"))
import torch_model  # noqa: E402

torch.set_num_threads(2)
fivefold = os.path.join(build, "fivefold")
env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
L, WINDOWS = 24, 64

FAMILIES = {
    "llama": {"vocab_size": 260, "d_model": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "seq_len": L,
              "ffn_hidden": 48, "num_experts": 0, "rope_base": 10000.0, "norm_eps": 1e-6},
    "mixtral": {"vocab_size": 260, "d_model": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "seq_len": L,
                "num_experts": 4, "moe_top_k": 2, "moe_ffn_hidden": 24, "rope_base": 1e6, "norm_eps": 1e-5},
}


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def hf_name(family, name):
    if family == "mixtral":
        name = re.sub(r"\.mlp\.gate\.", ".block_sparse_moe.gate.", name)
        for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            name = re.sub(r"\.mlp\.experts\.(\d+)\." + ours, r".block_sparse_moe.experts.\1." + theirs, name)
    return name


def write_hf(folder, family, m, model):
    os.makedirs(folder)
    cfg = {"model_type": family, "hidden_size": m["d_model"], "num_hidden_layers": m["num_layers"],
           "num_attention_heads": m["num_heads"], "num_key_value_heads": m["num_kv_heads"],
           "vocab_size": m["vocab_size"], "rms_norm_eps": m["norm_eps"], "rope_theta": m["rope_base"],
           "max_position_embeddings": m["seq_len"], "tie_word_embeddings": False, "hidden_act": "silu"}
    if family == "llama":
        cfg["intermediate_size"] = m["ffn_hidden"]
    else:
        cfg.update(intermediate_size=m["moe_ffn_hidden"], num_local_experts=m["num_experts"],
                   num_experts_per_tok=m["moe_top_k"])
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    write_safetensors(os.path.join(folder, "model.safetensors"),
                      {hf_name(family, n): p.detach().float().numpy() for n, p in model.named_fivefold_parameters()})


def write_indexed_dataset(prefix, ids):
    ids = np.asarray(ids, dtype=np.uint16)
    ids.tofile(prefix + ".bin")
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<QQ", 1, 2))
        f.write(np.array([len(ids)], dtype=np.int32).tobytes() + np.array([0], dtype=np.int64).tobytes())
        f.write(np.array([0, 1], dtype=np.int64).tobytes())


def fivefold_eval(model, prefix, ranks=1, layout=()):
    cmd = [fivefold, "eval", "--model", model, "--data", prefix, "--tokenizer_type", "byte", "--micro_batch", "5",
           *layout]
    if ranks > 1:
        cmd = ["mpirun", "--oversubscribe", "-np", str(ranks), "-x", "OMP_NUM_THREADS"] + cmd
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        raise SystemExit("fivefold eval failed: " + " ".join(cmd))
    m = re.search(r"loss ([0-9.]+) \| perplexity [0-9.]+ \| bits per byte [0-9.]+ \| (\d+) tokens", r.stdout)
    return float(m.group(1)), int(m.group(2))


failures = []
with tempfile.TemporaryDirectory() as tmp:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 256, size=WINDOWS * L + 1)
    prefix = os.path.join(tmp, "doc")
    write_indexed_dataset(prefix, ids)
    for family, over in FAMILIES.items():
        cpath = os.path.join(tmp, family + ".json")
        with open(cpath, "w") as f:
            json.dump({"model": dict(over, layer_pattern=""), "train": {"model_preset": ""}}, f)
        full = json.loads(subprocess.run([fivefold, "train", "--config", cpath, "--print_config"], check=True,
                                         capture_output=True, text=True).stdout)["model"]
        torch.manual_seed(11)
        model = torch_model.DecoderLM(full).double()
        with torch.no_grad():
            for _, p in model.named_fivefold_parameters():
                p.normal_(0.0, 0.3 if p.dim() == 2 else 0.1).add_(1.0 if p.dim() == 1 else 0.0)
        folder = os.path.join(tmp, family + "-hf")
        write_hf(folder, family, full, model)
        # What PyTorch computes: the mean cross-entropy of every window's targets.
        seq = torch.from_numpy(ids.astype(np.int64))
        tokens = torch.stack([seq[i * L:i * L + L] for i in range(WINDOWS)])
        targets = torch.stack([seq[i * L + 1:i * L + L + 1] for i in range(WINDOWS)])
        with torch.no_grad():
            want = model(tokens, targets)[0].item()
        layouts = [(1, [])] + ([(2, ["--tp", "2"])] if family == "llama" else [(2, ["--ep", "2"])])
        for ranks, layout in layouts:
            got, n = fivefold_eval(folder, prefix, ranks, layout)
            ok = abs(got - want) <= 1e-5 * abs(want) and n == WINDOWS * L
            print("%-8s %-10s eval loss fivefold %.6f torch %.6f over %d tokens: %s" %
                  (family, " ".join(layout) or "1 rank", got, want, n, "ok" if ok else "MISMATCH"))
            if not ok:
                failures.append(family + " " + " ".join(layout))

print("%d failed" % len(failures))
sys.exit(1 if failures else 0)
