"""A Hugging Face folder written by an independent PyTorch implementation (bench/torch_model.py):
fivefold's eval reads it and computes the loss PyTorch
computes on the same tokens, in one process and under mpirun with TP 2 and EP 2.
Nemotron-H: a folder written in HF's own layout (fused in_proj z | x | B | C | dt of unequal
parts, conv1d [C, 1, K], names under backbone. and under model., time_step_limit [0, Infinity] as
Python's json writes it) and the loss of a reference that follows transformers'
modeling_nemotron_h.py (the Mamba2 scan as a plain recurrence); one process and TP 2.

Usage: test_init_from_hf.py BUILD_DIR SOURCE_DIR. Exits non-zero on any mismatch.
Data: one document of random byte ids (an indexed dataset written here), so eval's windows are
the consecutive [i L, i L + L + 1) of it. Tolerance: PyTorch in float64, fivefold in fp32 over
~1,500 targets; the mean loss agrees to 1e-5 relative (fp32 rounding of logits of size ~1e0 and
of the log-sum-exp, averaged). A loss from misplaced weights differs by far more.
"""
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

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


NEMOTRON_H = {"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "vocab_size": 260,
              "hidden_size": 32, "hybrid_override_pattern": "M-M*-", "num_hidden_layers": 5,
              "num_attention_heads": 4, "num_key_value_heads": 2, "attention_head_dim": 8, "intermediate_size": 48,
              "mamba_num_heads": 4, "mamba_head_dim": 3, "n_groups": 2, "ssm_state_size": 5, "conv_kernel": 4,
              "chunk_size": 8, "layer_norm_epsilon": 1e-5, "mlp_hidden_act": "relu2", "mamba_hidden_act": "silu",
              "use_conv_bias": True, "mamba_proj_bias": False, "use_bias": False, "time_step_limit": [0.0, float("inf")],
              "max_position_embeddings": L, "tie_word_embeddings": False}


def nemotron_h_weights(cfg, gen):
    """Random HF-named tensors of a NemotronHForCausalLM (float64)."""
    D, V, F_ = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    H, P, G, N, K = (cfg[k] for k in ("mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size", "conv_kernel"))
    di, Hq, Hkv, dh = H * P, cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["attention_head_dim"]
    mat = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.3
    vec = lambda n: 1.0 + torch.randn(n, generator=gen, dtype=torch.float64) * 0.1
    w = {"backbone.embeddings.weight": mat(V, D), "backbone.norm_f.weight": vec(D), "lm_head.weight": mat(V, D)}
    for i, kind in enumerate(cfg["hybrid_override_pattern"]):
        p = "backbone.layers.%d." % i
        w[p + "norm.weight"] = vec(D)
        if kind == "M":
            w.update({p + "mixer.in_proj.weight": mat(2 * di + 2 * G * N + H, D),
                      p + "mixer.conv1d.weight": mat(di + 2 * G * N, 1, K), p + "mixer.conv1d.bias": vec(di + 2 * G * N) - 1,
                      p + "mixer.dt_bias": vec(H), p + "mixer.A_log": vec(H), p + "mixer.D": vec(H),
                      p + "mixer.norm.weight": vec(di), p + "mixer.out_proj.weight": mat(D, di)})
        elif kind == "*":
            w.update({p + "mixer.q_proj.weight": mat(Hq * dh, D), p + "mixer.k_proj.weight": mat(Hkv * dh, D),
                      p + "mixer.v_proj.weight": mat(Hkv * dh, D), p + "mixer.o_proj.weight": mat(D, Hq * dh)})
        else:
            w.update({p + "mixer.up_proj.weight": mat(F_, D), p + "mixer.down_proj.weight": mat(D, F_)})
    return {n: t.float().double() for n, t in w.items()}  # the values an F32 file holds


def nemotron_h_loss(cfg, w, tokens, targets):
    """Mean cross-entropy of HF's NemotronH forward: per layer h += mixer(RMSNorm(h)); Mamba2 as in
    NemotronHMamba2Mixer (in_proj split z | xBC | dt, causal depthwise conv + SiLU, softplus(dt +
    dt_bias) unclamped as the kernels' dt_limit (0, inf), S_t = exp(dt A) S + dt x B^T, y = S C + D x,
    B and C of group h // (H / G), gated RMSNorm per group of d_inner / G after y * silu(z)); attention
    without position embedding; MLP down(relu(up x)^2); norm_f; lm_head."""
    D, eps = cfg["hidden_size"], cfg["layer_norm_epsilon"]
    H, P, G, N, K = (cfg[k] for k in ("mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size", "conv_kernel"))
    di, Hq, Hkv, dh = H * P, cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["attention_head_dim"]
    rms = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g
    B, S = tokens.shape
    h = w["backbone.embeddings.weight"][tokens]
    for i, kind in enumerate(cfg["hybrid_override_pattern"]):
        p = "backbone.layers.%d.mixer." % i
        x = rms(h, w["backbone.layers.%d.norm.weight" % i])
        if kind == "M":
            z, xbc, dt = torch.split(x @ w[p + "in_proj.weight"].T, [di, di + 2 * G * N, H], dim=-1)
            xbc = F.conv1d(xbc.transpose(1, 2), w[p + "conv1d.weight"], w[p + "conv1d.bias"], padding=K - 1,
                           groups=di + 2 * G * N)[..., :S]
            xs, Bm, Cm = torch.split(F.silu(xbc.transpose(1, 2)), [di, G * N, G * N], dim=-1)
            dt = F.softplus(dt + w[p + "dt_bias"])
            A = -torch.exp(w[p + "A_log"])
            xs = xs.reshape(B, S, H, P)
            Bm = Bm.reshape(B, S, G, N).repeat_interleave(H // G, dim=2)
            Cm = Cm.reshape(B, S, G, N).repeat_interleave(H // G, dim=2)
            state, ys = torch.zeros(B, H, P, N, dtype=torch.float64), []
            for t in range(S):
                d = dt[:, t, :, None, None]
                state = state * torch.exp(d * A[:, None, None]) + d * xs[:, t, :, :, None] * Bm[:, t, :, None, :]
                ys.append((state * Cm[:, t, :, None, :]).sum(-1) + w[p + "D"][:, None] * xs[:, t])
            v = (torch.stack(ys, 1).reshape(B, S, di) * F.silu(z)).reshape(B, S, G, di // G)
            v = (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)).reshape(B, S, di) * w[p + "norm.weight"]
            out = v @ w[p + "out_proj.weight"].T
        elif kind == "*":
            q = (x @ w[p + "q_proj.weight"].T).view(B, S, Hq, dh).transpose(1, 2)
            k = (x @ w[p + "k_proj.weight"].T).view(B, S, Hkv, dh).transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1)
            v = (x @ w[p + "v_proj.weight"].T).view(B, S, Hkv, dh).transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
            scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, S, Hq * dh) @ w[p + "o_proj.weight"].T
        else:
            out = torch.relu(x @ w[p + "up_proj.weight"].T).pow(2) @ w[p + "down_proj.weight"].T
        h = h + out
    logits = rms(h, w["backbone.norm_f.weight"]) @ w["lm_head.weight"].T
    return F.cross_entropy(logits.reshape(B * S, -1), targets.reshape(-1)).item()


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

    # Nemotron-H in HF's own layout, under both roots (NVIDIA's backbone., transformers' model.).
    gen = torch.Generator().manual_seed(5)
    w = nemotron_h_weights(NEMOTRON_H, gen)
    seq = torch.from_numpy(ids.astype(np.int64))
    tokens = torch.stack([seq[i * L:i * L + L] for i in range(WINDOWS)])
    targets = torch.stack([seq[i * L + 1:i * L + L + 1] for i in range(WINDOWS)])
    with torch.no_grad():
        want = nemotron_h_loss(NEMOTRON_H, w, tokens, targets)
    for root in ("backbone.", "model."):
        folder = os.path.join(tmp, "nemotron_h-" + root.rstrip("."))
        os.makedirs(folder)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(NEMOTRON_H, f)  # time_step_limit's inf as Infinity
        write_safetensors(os.path.join(folder, "model.safetensors"),
                          {(root + n[len("backbone."):] if n.startswith("backbone.") else n): t.numpy()
                           for n, t in w.items()})
        for ranks, layout in [(1, [])] + ([(2, ["--tp", "2"])] if root == "backbone." else []):
            got, n = fivefold_eval(folder, prefix, ranks, layout)
            ok = abs(got - want) <= 1e-5 * abs(want) and n == WINDOWS * L
            print("%-8s %-10s eval loss fivefold %.6f torch %.6f over %d tokens: %s" %
                  ("nemotron_h " + root, " ".join(layout) or "1 rank", got, want, n, "ok" if ok else "MISMATCH"))
            if not ok:
                failures.append("nemotron_h " + root + " " + " ".join(layout))

print("%d failed" % len(failures))
sys.exit(1 if failures else 0)
