"""Parity of one whole PPO step of fivefold's (recipes/ppo; specs/methods.md §6.4) with an
independent PyTorch implementation of the formulas, on fixed rollouts and a tiny model: the
rollout-time actor's and the reference's log-probs, the critic's values and the reward model's
score; the per-token KL penalty, GAE, the masked whitening; the actor's clipped loss with its
entropy bonus over the sequences that ended and the critic's clipped value loss, and every gradient of both trained
models. tests/parity/ppo_dump.cpp writes fivefold's side; the models are bench/torch_model.py in
float64 with fivefold's weights.

Usage: test_ppo_parity.py BUILD_DIR SOURCE_DIR. Exits non-zero on any mismatch.
Tolerance: fivefold computes in fp32 (float64 in its sums); advantages and returns agree to 1e-4
absolute (whitened values of order 1), the losses to 1e-5 relative, each gradient tensor to 1e-4
of its own max-abs, as in test_torch_parity.py. The clip decisions are the same on both sides:
the rows' ratios and value moves sit far from the clip boundaries against fp32 rounding.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

build, source = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(source, "bench"))
import torch_model  # noqa: E402

torch.set_num_threads(2)

MODEL = {"vocab_size": 37, "d_model": 24, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
         "seq_len": 9, "ffn_hidden": 40, "num_experts": 0, "layer_pattern": "*-*-", "init_std": 0.2}
TRAIN = {"model_preset": "", "seed": 5, "ppo_kl_beta": 0.1, "ppo_gamma": 0.97, "ppo_lambda": 0.9, "ppo_clip": 0.2,
         "ppo_value_clip": 0.05, "ppo_absolute_kl": True, "ppo_entropy_coeff": 0.02}


def model_of(cfg, t, prefix, value):
    m = torch_model.DecoderLM(dict(cfg, head="value" if value else "lm")).double()
    torch_model.load_fivefold_weights(m, {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)})
    return m


def row_logps(model, tokens, targets):
    logp = torch.log_softmax(model(tokens), dim=-1)
    return logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets >= 0)


failures = []
with tempfile.TemporaryDirectory() as tmp:
    cpath, opath = os.path.join(tmp, "ppo.json"), os.path.join(tmp, "ppo.safetensors")
    with open(cpath, "w") as f:
        json.dump({"model": MODEL, "train": TRAIN}, f)
    subprocess.run([os.path.join(build, "fivefold_ppo_dump"), cpath, opath], check=True)
    t, _ = torch_model.read_safetensors(opath)
    full = json.loads(subprocess.run([os.path.join(build, "fivefold"), "train", "--config", cpath, "--print_config"],
                                     check=True, capture_output=True, text=True).stdout)
    cfg, tc = full["model"], full["train"]
    tokens = torch.from_numpy(t["tokens"].astype(np.int64))
    targets = torch.from_numpy(t["targets"].astype(np.int64))
    ended = torch.from_numpy(t["ended"].astype(np.float64))
    B, S = tokens.shape
    mask = (targets >= 0).double()
    with torch.no_grad():  # the scores of the rollout-time models
        old = row_logps(model_of(cfg, t, "old_actor/", False), tokens, targets)
        ref = row_logps(model_of(cfg, t, "reference/", False), tokens, targets)
        values = model_of(cfg, t, "old_critic/", True)(tokens)[0] * mask
        rm = model_of(cfg, t, "reward/", True)(tokens)[0]
    # Rewards: -beta |logp - logp_ref| per response row, plus the score at its last row.
    rewards = -tc["ppo_kl_beta"] * (old - ref).abs() * mask
    last = (mask * torch.arange(S)).argmax(-1)
    rewards[torch.arange(B), last] += rm[torch.arange(B), last]
    # GAE backwards over each response (nothing after its end).
    adv, ret = torch.zeros(B, S, dtype=torch.float64), torch.zeros(B, S, dtype=torch.float64)
    for b in range(B):
        a, v_next = 0.0, 0.0
        for s in reversed(range(S)):
            if mask[b, s] == 0:
                continue
            delta = rewards[b, s] + tc["ppo_gamma"] * v_next - values[b, s]
            a = delta + tc["ppo_gamma"] * tc["ppo_lambda"] * a
            adv[b, s], ret[b, s] = a, a + values[b, s]
            v_next = values[b, s]
    mean = (adv * mask).sum() / mask.sum()
    var = (((adv - mean) * mask) ** 2).sum() / mask.sum()
    adv = torch.where(mask > 0, (adv - mean) / torch.sqrt(var + 1e-8), adv)
    for name, mine in (("advantages", adv), ("returns", ret)):
        err = np.abs(t[name] - mine.numpy()).max()
        if err > 1e-4:
            print("%s differ by %.2e" % (name, err))
            failures.append(name)
    # The actor: its clipped surrogate over the rows of sequences that ended.
    actor = model_of(cfg, t, "actor/", False)
    amask = mask * ended.unsqueeze(-1)
    rho = torch.exp(row_logps(actor, tokens, targets) - old)
    eps = tc["ppo_clip"]
    logp_all = torch.log_softmax(actor(tokens), dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    actor_loss = ((torch.max(-adv * rho, -adv * rho.clamp(1 - eps, 1 + eps)) - tc["ppo_entropy_coeff"] * entropy)
                  * amask).sum() / amask.sum()
    actor_loss.backward()
    # The critic: its clipped value loss over the response rows.
    critic = model_of(cfg, t, "critic/", True)
    v = critic(tokens)[0]
    v_clip = values + (v - values).clamp(-tc["ppo_value_clip"], tc["ppo_value_clip"])
    critic_loss = 0.5 * (torch.max((v - ret) ** 2, (v_clip - ret) ** 2) * mask).sum() / mask.sum()
    critic_loss.backward()
    clipped = ((torch.max(-adv * rho, -adv * rho.clamp(1 - eps, 1 + eps)) > -adv * rho) * amask).sum().item()
    vclipped = (((v_clip - ret) ** 2 > (v - ret) ** 2) * mask).sum().item()
    # The smallest distance of a row's ratio (value move) from a clip boundary: far above fp32's
    # rounding of the log-probs and values (1e-6), so both sides take the same branch on any CPU.
    with torch.no_grad():
        margin = min(((rho - (1 - eps)).abs() + (1 - amask)).min().item(),
                     ((rho - (1 + eps)).abs() + (1 - amask)).min().item(),
                     (((v - values).abs() - tc["ppo_value_clip"]).abs() + (1 - mask)).min().item())
    print("rows: actor %d (%d clipped), critic %d (%d clipped); nearest to a clip boundary: %.2e" %
          (amask.sum(), clipped, mask.sum(), vclipped, margin))
    if margin < 1e-4:
        print("a row sits within 1e-4 of a clip boundary: the comparison would depend on rounding")
        failures.append("margin")
    if clipped == 0 or vclipped == 0:
        print("a clip branch is not exercised")
        failures.append("coverage")
    for name, mine, k in (("actor loss", actor_loss, 0), ("critic loss", critic_loss, 1)):
        if abs(t["losses"][k] - mine.item()) > 1e-5 * abs(mine.item()) + 1e-7:
            print("%s: fivefold %.8f torch %.8f" % (name, t["losses"][k], mine.item()))
            failures.append(name)
    for role, model in (("actor", actor), ("critic", critic)):
        for pname, p in model.named_fivefold_parameters():
            g = p.grad.numpy()
            err = np.abs(t[role + "_grad/" + pname] - g).max() / max(np.abs(g).max(), 1e-6)
            if err > 1e-4:
                print("%s: gradient of %s differs by %.2e of its max-abs" % (role, pname, err))
                failures.append(role + " " + pname)
    print("PPO step: actor loss %.6f, critic loss %.6f: %s" % (actor_loss.item(), critic_loss.item(),
                                                               "ok" if not failures else "MISMATCH"))

sys.exit(1 if failures else 0)
