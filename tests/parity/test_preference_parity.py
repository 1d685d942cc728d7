"""Parity of fivefold's pairwise objectives (train/preference_objective.h) with an independent
PyTorch implementation of each formula (specs/methods.md §6.2-6.3) on a tiny model: the
Bradley-Terry reward-model loss on the value head, DPO (summed and averaged log-probs, with the SFT
term), IPO, and RPO squared, forward- and backward-KL. The policy and the reference (the DPO
family's, another seed) are bench/torch_model.py models in float64 loaded with fivefold's weights.

Usage: test_preference_parity.py BUILD_DIR SOURCE_DIR. Exits non-zero on any mismatch.
Tolerance: fivefold computes in fp32 (float64 only in its per-sequence sums and pair losses); the
loss agrees to 1e-5 relative and each gradient tensor to 1e-4 of its own max-abs, as in
test_torch_parity.py.
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

MODEL = {"vocab_size": 37, "d_model": 24, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
         "seq_len": 9, "ffn_hidden": 40, "num_experts": 0, "layer_pattern": "*-*-", "init_std": 0.2}
CASES = {
    "dpo": ({}, {"objective": "dpo", "dpo_beta": 0.3}),
    "dpo-average-sft": ({}, {"objective": "dpo", "dpo_beta": 0.5, "dpo_average_log_probs": True,
                             "dpo_sft_weight": 0.7}),
    "ipo": ({}, {"objective": "ipo", "dpo_beta": 0.4}),
    "rpo-sq": ({}, {"objective": "rpo_sq", "dpo_beta": 0.3, "rpo_eta": 0.25}),
    "rpo-fwd-kl": ({}, {"objective": "rpo_fwd_kl", "dpo_beta": 0.3, "rpo_eta": 0.25}),
    "rpo-bwd-kl": ({}, {"objective": "rpo_bwd_kl", "dpo_beta": 0.3, "rpo_eta": 0.25}),
    "dpo-moe": ({"num_experts": 4, "moe_top_k": 2, "moe_ffn_hidden": 16, "layer_pattern": "*E*-",
                 "moe_aux_loss_coeff": 0, "moe_z_loss_coeff": 0}, {"objective": "dpo"}),
    "bradley-terry": ({"head": "value"}, {"objective": "bradley_terry"}),
}


def sequence_logps(model, tokens, targets, average):
    logp = torch.log_softmax(model(tokens), dim=-1)
    mask = targets >= 0
    per_token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    s = per_token.sum(-1)
    return (s / mask.sum(-1) if average else s), per_token.sum(-1)


def pair_losses(train, d, dr):
    beta, eta = train.get("dpo_beta", 0.2), train.get("rpo_eta", 1.0)
    kind = train["objective"]
    if kind == "dpo":
        return -F.logsigmoid(beta * d)
    if kind == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    if kind == "rpo_sq":
        return (beta * d - eta * dr) ** 2
    lp, l1p = F.logsigmoid(beta * d), F.logsigmoid(-beta * d)
    la, l1a = F.logsigmoid(eta * dr), F.logsigmoid(-eta * dr)
    if kind == "rpo_fwd_kl":  # KL(target || policy)
        return la.exp() * (la - lp) + l1a.exp() * (l1a - l1p)
    return lp.exp() * (lp - la) + l1p.exp() * (l1p - l1a)  # rpo_bwd_kl: KL(policy || target)


failures = []
with tempfile.TemporaryDirectory() as tmp:
    for name, (model_over, train) in CASES.items():
        cfg = {"model": dict(MODEL, **model_over),
               "train": dict({"model_preset": "", "seed": 5, "data_format": "preference"}, **train)}
        cpath, opath = os.path.join(tmp, name + ".json"), os.path.join(tmp, name + ".safetensors")
        with open(cpath, "w") as f:
            json.dump(cfg, f)
        subprocess.run([os.path.join(build, "fivefold_parity_dump"), cpath, opath, "4"], check=True)
        t, _ = torch_model.read_safetensors(opath)
        full = json.loads(subprocess.run([os.path.join(build, "fivefold"), "train", "--config", cpath, "--print_config"],
                                         check=True, capture_output=True, text=True).stdout)
        tc = full["train"]
        policy = torch_model.DecoderLM(full["model"]).double()
        torch_model.load_fivefold_weights(policy, {k[6:]: v for k, v in t.items() if k.startswith("param/")})
        tokens = torch.from_numpy(t["tokens"].astype(np.int64))
        targets = torch.from_numpy(t["targets"].astype(np.int64))
        rewards = torch.from_numpy(t["rewards"].astype(np.float64))
        if tc["objective"] == "bradley_terry":
            values, aux = policy(tokens)
            mask = targets >= 0
            last = (mask * torch.arange(targets.shape[1])).argmax(-1)  # each sequence's last row with a target
            r = values.gather(-1, last.unsqueeze(-1)).squeeze(-1)
            loss = (-F.logsigmoid(r[0::2] - r[1::2])).mean() + aux
        else:
            reference = torch_model.DecoderLM(full["model"]).double()
            torch_model.load_fivefold_weights(reference, {k[4:]: v for k, v in t.items() if k.startswith("ref/")})
            avg = tc["dpo_average_log_probs"]
            with torch.no_grad():
                ref, _ = sequence_logps(reference, tokens, targets, avg)
            pol, pol_sum = sequence_logps(policy, tokens, targets, avg)
            delta = pol - ref
            loss = pair_losses(tc, delta[0::2] - delta[1::2], rewards[0::2] - rewards[1::2]).mean()
            loss = loss + tc["dpo_sft_weight"] * (-pol_sum[0::2]).mean()
        loss.backward()
        ok = abs(t["loss"][0] - loss.item()) <= 1e-5 * abs(loss.item()) + 1e-6
        if not ok:
            print("%s: loss fivefold %.8f torch %.8f" % (name, t["loss"][0], loss.item()))
        for pname, p in policy.named_fivefold_parameters():
            ref_g = p.grad.numpy()
            err = np.abs(t["grad/" + pname] - ref_g).max() / max(np.abs(ref_g).max(), 1e-6)
            if err > 1e-4:
                print("%s: gradient of %s differs by %.2e of its max-abs" % (name, pname, err))
                ok = False
        print("%-20s %s (loss %.6f)" % (name, "ok" if ok else "MISMATCH", loss.item()))
        if not ok:
            failures.append(name)

print("%d passed, %d failed" % (len(CASES) - len(failures), len(failures)))
sys.exit(1 if failures else 0)
