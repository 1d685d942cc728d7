"""Parity of fivefold's MoE router layer (layers/moe/router.h) with the formulas of
specs/parallelism-and-moe.md §6 written here in PyTorch (float64, autograd): group-limited top-k
selection under each score function and the expert bias, the gating probs, and the micro-batch,
sequence and global-batch load-balancing losses and the z-loss with their gradients, over the M
micro-batches of one optimizer step (tests/parity/router_dump.cpp runs fivefold's side).

Usage: test_router_parity.py BUILD_DIR. Exits non-zero on any mismatch.

The objective of a step, as fivefold's backward realises it (loss_scale 1 / M, §6.6):
    sum_m <dprobs_m, probs_m> + (1 / M) sum_m (L_m + L_z,m)
with L_m per moe_load_balancing (alpha = moe_aux_loss_coeff, s the aux-loss scores, c the counts
of each token's own top-K of s, constants; N = B S tokens of a micro-batch):
    aux_loss         alpha E / (K N^2) sum_e c_e sum_n s[n, e]
    seq_aux_loss     (alpha / B) sum_b E / (K S^2) sum_e c_{b,e} sum_{n in b} s[n, e]
    global_aux_loss  alpha E / (K N^2) sum_e (C_e / m) sum_n s[n, e],  C = c_1 + .. + c_m
Tolerance: fivefold computes in fp32 and the oracle in float64; every value and gradient entry
here is a sum of at most a few hundred O(1) terms (x and the weights are O(1), D = 24, E <= 16,
N = 18), each rounded to ~6e-8 relative, so they agree to a few 1e-6 of their scale: values to
1e-5 relative and each gradient to 1e-4 of its max-abs. The loss-only cases (DPROB_SCALE 0) put
the balancing loss's gradient alone in dx and dW, and for each the formula of the neighbouring
loss type (the micro-batch loss for the sequence loss, the per-micro-batch counts for the global
loss) is checked to differ from fivefold's gradient by far more than the tolerance, so that the
comparison can tell them apart.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

build = sys.argv[1]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import torch_model  # noqa: E402  (its safetensors reader only)

torch.set_num_threads(2)

BASE = {"d_model": 24, "num_heads": 4, "num_kv_heads": 2, "seq_len": 9, "num_experts": 8, "moe_top_k": 2, "moe_aux_loss_coeff": 0.5,
        "moe_z_loss_coeff": 0.0, "init_std": 0.3, "layer_pattern": "*E"}
SIG = {"moe_router_score": "sigmoid", "moe_router_norm_topk_prob": True, "moe_expert_bias": True,
       "moe_router_topk_scaling": 2.5}
# name: (model overrides, M micro-batches, DPROB_SCALE, the formula it must be told apart from)
CASES = {
    "aux-plain-softmax": ({}, 2, 0.0, None),
    "seq-softmax-pre": ({"moe_load_balancing": "seq_aux_loss", "moe_router_pre_softmax": True}, 2, 0.0, "aux_loss"),
    "seq-sigmoid-bias-grouped": (dict(SIG, moe_load_balancing="seq_aux_loss", num_experts=16, moe_top_k=4,
                                      moe_router_groups=4, moe_router_group_topk=2), 2, 0.0, "aux_loss"),
    "global-softmax-3-micro-batches": ({"moe_load_balancing": "global_aux_loss"}, 3, 0.0, "aux_loss"),
    "global-sigmoid-grouped": (dict(SIG, moe_load_balancing="global_aux_loss", moe_router_groups=4,
                                    moe_router_group_topk=1), 3, 0.0, "aux_loss"),
    "z-and-seq-with-routing-gradient": ({"moe_load_balancing": "seq_aux_loss", "moe_z_loss_coeff": 0.01,
                                         "moe_router_groups": 2, "moe_router_group_topk": 1}, 2, 1.0, None),
    "routing-grouped-pre-softmax": ({"moe_load_balancing": "none", "moe_router_pre_softmax": True,
                                     "moe_router_norm_topk_prob": True, "moe_top_k": 4, "moe_router_groups": 4,
                                     "moe_router_group_topk": 2}, 1, 1.0, None),
    "routing-grouped-sigmoid-bias": (dict(SIG, moe_load_balancing="none", num_experts=16, moe_top_k=6,
                                          moe_router_groups=8, moe_router_group_topk=3), 1, 1.0, None),
}
B = 2


def select(v, m):
    """Top-K experts of the selection values v [N, E], group-limited when configured."""
    E, K, G, M = m["num_experts"], m["moe_top_k"], m["moe_router_groups"], m["moe_router_group_topk"]
    if G == 0:
        return v.topk(K, -1).indices
    per = E // G
    group_score = v.view(-1, G, per).topk(K // M, -1).values.sum(-1)
    chosen = group_score.topk(M, -1).indices
    mask = torch.zeros_like(group_score).scatter(1, chosen, 1.0).bool().repeat_interleave(per, 1)
    return v.masked_fill(~mask, float("-inf")).topk(K, -1).indices


def gating(logits, idx, m):
    if m["moe_router_score"] == "sigmoid":
        p = torch.sigmoid(logits).gather(1, idx)
    elif m["moe_router_pre_softmax"]:
        p = torch.softmax(logits, -1).gather(1, idx)
    else:
        return torch.softmax(logits.gather(1, idx), -1) * m["moe_router_topk_scaling"]
    if m["moe_router_norm_topk_prob"]:
        p = p / (p.sum(-1, keepdim=True) + 1e-20)
    return p * m["moe_router_topk_scaling"]


def selection_values(logits, bias, m):
    if m["moe_router_score"] == "sigmoid":
        return torch.sigmoid(logits) + (bias if bias is not None else 0.0)
    if m["moe_router_pre_softmax"]:
        return torch.softmax(logits, -1)
    return logits


def aux_scores(logits, m):
    if m["moe_router_score"] == "sigmoid":
        s = torch.sigmoid(logits)
        return s / (s.sum(-1, keepdim=True) + 1e-20)
    return torch.softmax(logits, -1)


def counts_of(s, K, E):
    return torch.zeros(s.shape[0], E, dtype=s.dtype).scatter(1, s.detach().topk(K, -1).indices, 1.0)


def balancing_loss(s, kind, m, running):
    """The micro-batch's balancing loss; running = [C, micro-batches so far] of the global loss."""
    E, K, alpha, S = m["num_experts"], m["moe_top_k"], m["moe_aux_loss_coeff"], m["seq_len"]
    N = s.shape[0]
    c = counts_of(s, K, E)
    if kind == "aux_loss":
        return alpha * E / (K * N * N) * (c.sum(0) * s.sum(0)).sum()
    if kind == "seq_aux_loss":
        cb, sb = c.view(B, S, E).sum(1), s.view(B, S, E).sum(1)
        return alpha / B * E / (K * S * S) * (cb * sb).sum()
    if kind == "global_aux_loss":
        running[0] = running[0] + c.sum(0)
        running[1] += 1
        return alpha * E / (K * N * N) * (running[0] / running[1] * s.sum(0)).sum()
    return s.new_zeros(())


def oracle(t, m, M, kind):
    """(per micro-batch [idx, probs, losses], gradients of x per micro-batch, of the weight)."""
    W = torch.from_numpy(t["weight"]).double().requires_grad_()
    bias = torch.from_numpy(t["expert_bias"]).double() if "expert_bias" in t else None
    xs, total, out, running = [], 0.0, [], [0.0, 0]
    for mb in range(M):
        x = torch.from_numpy(t["mb%d/x" % mb]).double().requires_grad_()
        xs.append(x)
        logits = x @ W.t()
        idx_ff = torch.from_numpy(t["mb%d/idx" % mb].astype(np.int64))
        with torch.no_grad():
            idx = select(selection_values(logits, bias, m), m)
        same = bool((idx.sort(-1).values == idx_ff.sort(-1).values).all())
        probs = gating(logits, idx_ff, m)
        L = balancing_loss(aux_scores(logits, m), kind, m, running) if kind != "none" else logits.new_zeros(())
        Lz = m["moe_z_loss_coeff"] * torch.logsumexp(logits, -1).pow(2).mean()
        total = total + (torch.from_numpy(t["mb%d/dprobs" % mb]).double() * probs).sum() + (L + Lz) / M
        out.append((same, probs.detach().numpy(), np.array([L.item(), Lz.item()])))
    grads = torch.autograd.grad(total, xs + [W])
    return out, [g.numpy() for g in grads[:-1]], grads[-1].numpy()


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


failures = []
with tempfile.TemporaryDirectory() as tmp:
    for name, (over, M, dscale, rival) in CASES.items():
        cfg = {"model": dict(BASE, **over), "train": {"model_preset": "", "seed": 7}}
        cpath, opath = os.path.join(tmp, name + ".json"), os.path.join(tmp, name + ".safetensors")
        with open(cpath, "w") as f:
            json.dump(cfg, f)
        subprocess.run([os.path.join(build, "fivefold_router_dump"), cpath, opath, str(M), str(B), str(dscale)],
                       check=True)
        t, _ = torch_model.read_safetensors(opath)
        full = json.loads(subprocess.run([os.path.join(build, "fivefold"), "train", "--config", cpath,
                                          "--print_config"], check=True, capture_output=True, text=True).stdout)["model"]
        kind = full["moe_load_balancing"]
        got, gx, gw = oracle(t, full, M, kind)
        ok, worst = True, 0.0
        for mb, (same, probs, losses) in enumerate(got):
            if not same:
                print("%s: micro-batch %d: the selected experts differ" % (name, mb))
                ok = False
                continue
            if not np.allclose(t["mb%d/probs" % mb], probs, rtol=1e-5, atol=1e-6):
                print("%s: micro-batch %d: probs differ by %.2e" % (name, mb, np.abs(t["mb%d/probs" % mb] - probs).max()))
                ok = False
            if not np.allclose(t["mb%d/losses" % mb], losses, rtol=1e-5, atol=1e-9):
                print("%s: micro-batch %d: losses fivefold %s, torch %s" % (name, mb, t["mb%d/losses" % mb], losses))
                ok = False
            worst = max(worst, rel(t["mb%d/dx" % mb], gx[mb]))
        worst = max(worst, rel(t["dweight"], gw))
        if worst > 1e-4:
            print("%s: gradients differ by %.2e of their max-abs" % (name, worst))
            ok = False
        note = ""
        if rival is not None:  # the neighbouring formula must be far outside the tolerance
            _, rx, rw = oracle(t, dict(full, moe_load_balancing=rival), M, rival)
            apart = max(rel(t["dweight"], rw), *(rel(t["mb%d/dx" % mb], rx[mb]) for mb in range(M)))
            note = "; %s's gradient %.1e away" % (rival, apart)
            if apart < 1e-2:
                print("%s: the %s formula gives nearly the same gradient (%.1e): the case tests nothing" % (name, rival, apart))
                ok = False
        if "moe_router_groups" in over:  # the groups must change some selection
            t_flat = dict(full, moe_router_groups=0, moe_router_group_topk=0)
            changed = 0
            W = torch.from_numpy(t["weight"]).double()
            bias = torch.from_numpy(t["expert_bias"]).double() if "expert_bias" in t else None
            for mb in range(M):
                v = selection_values(torch.from_numpy(t["mb%d/x" % mb]).double() @ W.t(), bias, full)
                changed += int((select(v, full).sort(-1).values != select(v, t_flat).sort(-1).values).any(-1).sum())
            note += "; groups changed %d of %d rows' experts" % (changed, M * B * full["seq_len"])
            if changed == 0:
                print("%s: the group limit changed no selection: the case tests nothing" % name)
                ok = False
        print("%-34s %s (gradients: max |diff| / max-abs %.1e%s)" % (name, "ok" if ok else "MISMATCH", worst, note))
        if not ok:
            failures.append(name)

print("%d cases, %d failures%s" % (len(CASES), len(failures), (": " + ", ".join(failures)) if failures else ""))
sys.exit(1 if failures else 0)
