"""Parity of fivefold's forward and backward with an independent PyTorch implementation
(bench/torch_model.py) on tiny dense and MoE models, each routing and norm variant.

Usage: test_torch_parity.py BUILD_DIR SOURCE_DIR. Exits non-zero on any mismatch.
Tolerance: fp32 on both sides with different summation orders; losses agree to 1e-5 relative and
each gradient tensor to 1e-4 of its own max-abs (a few hundred ulps at these sizes).
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

BASE = {"vocab_size": 37, "d_model": 24, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
        "seq_len": 9, "ffn_hidden": 40, "num_experts": 4, "moe_top_k": 2, "moe_ffn_hidden": 16, "init_std": 0.2,
        "moe_aux_loss_coeff": 0.05, "moe_z_loss_coeff": 0.01}
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
}

failures = []
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
        loss, aux = model(tokens, targets)
        (loss + aux).backward()
        ok = True
        want = np.array([loss.item(), aux.item()])
        if not np.allclose(t["loss"], want, rtol=1e-5, atol=1e-6):
            print("%s: loss fivefold %s torch %s" % (name, t["loss"], want))
            ok = False
        for pname, p in model.named_fivefold_parameters():
            g = t["grad/" + pname]
            ref = p.grad.numpy()
            scale = max(np.abs(ref).max(), 1e-6)
            err = np.abs(g - ref).max() / scale
            if err > 1e-4:
                print("%s: gradient of %s differs by %.2e of its max-abs" % (name, pname, err))
                ok = False
        print("%-34s %s (loss %.6f, aux %.6f)" % (name, "ok" if ok else "MISMATCH", loss.item(), aux.item()))
        if not ok:
            failures.append(name)

print("%d passed, %d failed" % (len(CASES) - len(failures), len(failures)))
sys.exit(1 if failures else 0)
