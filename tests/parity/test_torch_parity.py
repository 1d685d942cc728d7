"""Parity of fivefold's forward and backward with an independent PyTorch implementation
(bench/torch_model.py) on tiny dense and MoE models, each routing and norm variant, and hybrid
Mamba2 models (Nemotron-H: 'M' layers beside attention without RoPE, squared-ReLU MLPs and MoEs).

Usage: test_torch_parity.py BUILD_DIR SOURCE_DIR. Exits non-zero on any mismatch.
Tolerance: fivefold computes in fp32, the PyTorch model in float64 (so the comparison measures
fivefold's rounding), with different summation orders; losses agree to 1e-5 relative and each
gradient tensor to 1e-4 of its own max-abs (a few hundred ulps at these sizes).
The same bounds hold for the Mamba2 layers: fivefold's chunked SSD scan (fp32) and the PyTorch
one (ssd_chunked, float64) sum the same terms in different orders (other chunk boundaries need
not matter: the chunked form is exact algebra), each term a product of O(1) factors and exp of a
non-positive partial sum of Δ A, so every decay is <= 1 and the states stay bounded; over 9
positions an output or gradient entry is a sum of at most a few hundred such terms, each rounded
to ~6e-8 relative in fp32 (exp and softplus to a few ulps), and only the sums over all positions
(D, dt_bias, A_log, the B/C projections and convs) cancel partly. Measured: at most ~7e-6 of a
tensor's max-abs (the first layer's D and in_proj_B gradients), over 10x under 1e-4, while a
wrong group mapping (h % G), a dropped D, inter-chunk or clamp term, or a norm over all channels
instead of per group puts some gradient off by more than its own max-abs (and the loss by 1e-3). Before the models, the PyTorch chunked scan is checked
against the sequential recurrence (float64, 1e-10; chunks dividing the length or not).
"""
import json
import os
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

BASE = {"vocab_size": 37, "d_model": 24, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
        "seq_len": 9, "ffn_hidden": 40, "num_experts": 4, "moe_top_k": 2, "moe_ffn_hidden": 16, "init_std": 0.2,
        "moe_aux_loss_coeff": 0.05, "moe_z_loss_coeff": 0.01}
MAMBA = {"mamba_num_heads": 4, "mamba_head_dim": 4, "mamba_groups": 2, "mamba_state": 6, "mamba_chunk": 4,
         "activation": "squared_relu", "position_embedding": "none"}
CASES = {
    "dense-llama": {"num_experts": 0, "layer_pattern": "*-*-"},
    "mixtral-topk-softmax": {},
    "qwen2-pre-softmax-shared-gate": {"moe_router_pre_softmax": True, "moe_shared_expert_hidden": 20,
                                      "moe_shared_expert_gate": True, "num_experts": 6, "moe_top_k": 3},
    "sigmoid-renorm-scaled": {"moe_router_score": "sigmoid", "moe_router_norm_topk_prob": True,
                              "moe_router_topk_scaling": 2.5},
    "capacity-probs": {"moe_capacity_factor": 0.75, "moe_drop_policy": "probs"},
    "capacity-position-padded": {"moe_capacity_factor": 0.75, "moe_drop_policy": "position", "moe_pad_to_capacity": True},
    "nemotron4-style": {"num_experts": 0, "layer_pattern": "*-*-", "norm": "layernorm1p",
                        "activation": "squared_relu", "rotary_percent": 0.5, "tie_embeddings": True},
    "gelu-nope-hybrid-pattern": {"activation": "gelu", "position_embedding": "none", "layer_pattern": "*E-*E"},
    "k-equals-e": {"moe_top_k": 4},
    # DeepSeek-V3's routing: sigmoid scores renormalised and scaled, the expert bias, the sequence
    # aux loss, group-limited top-k (8 experts in 4 groups, 2 per token, top 4), a shared expert.
    "deepseek-v3-seq-aux-grouped": {"moe_router_score": "sigmoid", "moe_router_norm_topk_prob": True,
                                    "moe_router_topk_scaling": 2.5, "moe_expert_bias": True,
                                    "moe_load_balancing": "seq_aux_loss", "num_experts": 8, "moe_top_k": 4,
                                    "moe_router_groups": 4, "moe_router_group_topk": 2,
                                    "moe_shared_expert_hidden": 20},
    # One micro-batch: the global-batch loss is the micro-batch loss.
    "global-aux-pre-softmax-grouped": {"moe_load_balancing": "global_aux_loss", "moe_router_pre_softmax": True,
                                       "moe_router_groups": 2, "moe_router_group_topk": 1},
    "no-balancing-loss": {"moe_load_balancing": "none"},
    # Nemotron-H hybrids: chunk 4 over 9 positions (the last chunk padded), H 4 heads in G 2 groups.
    "nemotron-h-hybrid": dict(MAMBA, num_experts=0, layer_pattern="M*M-"),
    "nemotron-h-moe-hybrid": dict(MAMBA, layer_pattern="M-M*E"),
    # One group, conv kernel 3, chunk 3 dividing 9, and Δ clamped to [0.01, 0.5]: Δ is initialised
    # over [1e-3, 1], so the clamp is active at both ends (checked below).
    "mamba-one-group-dt-limit": dict(MAMBA, num_experts=0, layer_pattern="MM*-", mamba_groups=1, mamba_chunk=3,
                                     mamba_conv_kernel=3, mamba_dt_limit_min=0.01, mamba_dt_limit_max=0.5,
                                     mamba_dt_min=1e-3, mamba_dt_max=1.0),
}

failures = []


def sequential_scan(x, delta, A, Bh, Ch):
    """S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_t^T, y_t = S_t C_t, one position at a time."""
    b, S, H, P = x.shape
    state, ys = x.new_zeros(b, H, P, Bh.shape[-1]), []
    for t in range(S):
        dt = delta[:, t, :, None, None]
        state = torch.exp(dt * A[:, None, None]) * state + dt * x[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    return torch.stack(ys, 1)


# The oracle's chunked scan against the recurrence, values and gradients, in float64.
gen = torch.Generator().manual_seed(3)
for S, Q in [(9, 4), (9, 3), (9, 16), (1, 4), (20, 5)]:
    x, Bh, Ch = (torch.randn(2, S, 3, n, generator=gen, dtype=torch.float64, requires_grad=True) for n in (4, 5, 5))
    delta = (2 * torch.rand(2, S, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    A = (-5 * torch.rand(3, generator=gen, dtype=torch.float64)).requires_grad_()
    w = torch.randn(2, S, 3, 4, generator=gen, dtype=torch.float64)
    ins = [x, delta, A, Bh, Ch]
    y1, y2 = torch_model.ssd_chunked(x, delta, A, Bh, Ch, Q), sequential_scan(x, delta, A, Bh, Ch)
    g1, g2 = torch.autograd.grad((y1 * w).sum(), ins), torch.autograd.grad((y2 * w).sum(), ins)
    err = max((y1 - y2).abs().max().item(), *((a - b).abs().max().item() for a, b in zip(g1, g2)))
    if err > 1e-10:
        print("ssd_chunked S=%d Q=%d: differs from the sequential scan by %.2e" % (S, Q, err))
        failures.append("ssd_chunked S=%d Q=%d" % (S, Q))


def clamp_counts(model, tokens):
    """How many Δ = softplus(dt + dt_bias) of the Mamba2 layers fall below / above the clamp."""
    seen = []
    hooks = [blk.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0])))
             for blk in model.blocks if isinstance(blk, torch_model.Mamba2)]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    raw = [F.softplus(mod.in_proj_dt(u) + mod.dt_bias) for mod, u in seen]
    return sum(int((r < mod.dt_lo).sum()) for (mod, _), r in zip(seen, raw)), \
        sum(int((r > mod.dt_hi).sum()) for (mod, _), r in zip(seen, raw)), sum(r.numel() for r in raw)


with tempfile.TemporaryDirectory() as tmp:
    for name, over in CASES.items():
        model_cfg = dict(BASE, **over)
        cfg = {"model": model_cfg, "train": {"model_preset": "", "seed": 5}}
        cpath, opath = os.path.join(tmp, name + ".json"), os.path.join(tmp, name + ".safetensors")
        with open(cpath, "w") as f:
            json.dump(cfg, f)
        subprocess.run([os.path.join(build, "fivefold_parity_dump"), cpath, opath, "3"], check=True)
        t, _ = torch_model.read_safetensors(opath)
        # Resolve defaults exactly as fivefold did: ask it for the full config.
        full = json.loads(subprocess.run([os.path.join(build, "fivefold"), "train", "--config", cpath, "--print_config"],
                                         check=True, capture_output=True, text=True).stdout)["model"]
        model = torch_model.DecoderLM(full).double()
        params = {k[len("param/"):]: v for k, v in t.items() if k.startswith("param/")}
        torch_model.load_fivefold_weights(model, params)
        tokens = torch.from_numpy(t["tokens"].astype(np.int64))
        targets = torch.from_numpy(t["targets"].astype(np.int64))
        if full["mamba_dt_limit_max"] > 0:
            lo, hi, n = clamp_counts(model, tokens)
            print("%-34s Δ clamped: %d of %d below, %d above" % (name, lo, n, hi))
            if lo == 0 or hi == 0:
                print("%s: the Δ clamp is not active at both ends; the case tests nothing" % name)
                failures.append(name + " (clamp inactive)")
        loss, aux = model(tokens, targets)
        (loss + aux).backward()
        ok, worst, worst_name = True, 0.0, ""
        want = np.array([loss.item(), aux.item()])
        if not np.allclose(t["loss"], want, rtol=1e-5, atol=1e-6):
            print("%s: loss fivefold %s torch %s" % (name, t["loss"], want))
            ok = False
        for pname, p in model.named_fivefold_parameters():
            g = t["grad/" + pname]
            ref = p.grad.numpy()
            scale = max(np.abs(ref).max(), 1e-6)
            err = np.abs(g - ref).max() / scale
            if err >= worst:
                worst, worst_name = err, pname
            if err > 1e-4:
                print("%s: gradient of %s differs by %.2e of its max-abs" % (name, pname, err))
                ok = False
        loss_err = np.abs(t["loss"] - want).max()
        print("%-34s %s (loss %.6f, aux %.6f; loss |diff| %.1e; gradients: max |diff| / max-abs %.1e, of %s)"
              % (name, "ok" if ok else "MISMATCH", loss.item(), aux.item(), loss_err, worst, worst_name))
        if not ok:
            failures.append(name)

print("%d cases, %d failures%s" % (len(CASES), len(failures), (": " + ", ".join(failures)) if failures else ""))
sys.exit(1 if failures else 0)
