"""An independent PyTorch implementation of fivefold's decoder LM, built from a fivefold run
config (the JSON that `fivefold train --print_config` prints or that a model file carries).

Two uses: the oracle of the parity tests (tests/parity/), which load fivefold's weights into this
model and compare losses and gradients computed by autograd; and the peer of the benchmarks
(bench/torch_peer.py), which times training steps of the same model.

The MoE auxiliary losses are added to the loss here; fivefold injects their gradients at the
router instead (specs/parallelism-and-moe.md §6.6). Both give the same parameter gradients.
"""
import json
import math
import struct

import numpy as np
import torch
import torch.nn.functional as F


def pattern_of(m):
    if m["layer_pattern"]:
        return m["layer_pattern"]
    return ("*E" if m["num_experts"] > 0 else "*-") * m["num_layers"]


def layer_prefix(pattern, j):
    alternating = len(pattern) % 2 == 0 and all((i % 2 == 0) == (c == "*") for i, c in enumerate(pattern))
    return "model.layers.%d" % (j // 2 if alternating else j)


def head_dim_of(m):
    return m["head_dim"] if m["head_dim"] > 0 else m["d_model"] // m["num_heads"]


class Norm(torch.nn.Module):
    def __init__(self, d, kind, eps):
        super().__init__()
        self.kind, self.eps = kind, eps
        if kind == "rmsnorm":
            self.weight = torch.nn.Parameter(torch.ones(d))
        else:  # layernorm1p: zero-centred gain
            self.weight = torch.nn.Parameter(torch.zeros(d))
            self.bias = torch.nn.Parameter(torch.zeros(d))

    def forward(self, x):
        if self.kind == "rmsnorm":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + self.eps) * (1 + self.weight) + self.bias


class Mlp(torch.nn.Module):
    def __init__(self, d, f, act):
        super().__init__()
        self.act = act
        if act == "swiglu":
            self.gate_proj = torch.nn.Linear(d, f, bias=False)
        self.up_proj = torch.nn.Linear(d, f, bias=False)
        self.down_proj = torch.nn.Linear(f, d, bias=False)

    def hidden(self, x):
        if self.act == "swiglu":
            return F.silu(self.gate_proj(x)) * self.up_proj(x)
        u = self.up_proj(x)
        return torch.relu(u).pow(2) if self.act == "squared_relu" else F.gelu(u)

    def forward(self, x, scale=None):
        h = self.hidden(x)
        if scale is not None:  # experts: the gating prob multiplies the activation
            h = h * scale[:, None]
        return self.down_proj(h)


class Attention(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        d, self.hq, self.hkv, self.dh = m["d_model"], m["num_heads"], m["num_kv_heads"], head_dim_of(m)
        self.q_proj = torch.nn.Linear(d, self.hq * self.dh, bias=False)
        self.k_proj = torch.nn.Linear(d, self.hkv * self.dh, bias=False)
        self.v_proj = torch.nn.Linear(d, self.hkv * self.dh, bias=False)
        self.o_proj = torch.nn.Linear(self.hq * self.dh, d, bias=False)
        self.rope = m["position_embedding"] == "rope"
        self.rot = int(m["rotary_percent"] * self.dh)
        self.base = m["rope_base"]

    def apply_rope(self, x):  # x [B, H, S, dh]; rotate-half on the first `rot` dims
        S, half = x.shape[2], self.rot // 2
        inv = self.base ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / self.rot)
        ang = torch.arange(S, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        a, b, rest = x[..., :half], x[..., half:self.rot], x[..., self.rot:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)

    def forward(self, x):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.hq, self.dh).transpose(1, 2)
        k = self.k_proj(x).view(B, S, self.hkv, self.dh).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.hkv, self.dh).transpose(1, 2)
        if self.rope:
            q, k = self.apply_rope(q), self.apply_rope(k)
        g = self.hq // self.hkv
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True) if hasattr(F, "scaled_dot_product_attention") \
            else self.naive(q, k, v)
        return self.o_proj(o.transpose(1, 2).reshape(B, S, self.hq * self.dh))

    def naive(self, q, k, v):
        S = q.shape[2]
        s = q @ k.transpose(-1, -2) / math.sqrt(self.dh)
        mask = torch.ones(S, S, dtype=torch.bool).triu(1)
        return torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ v


class Moe(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        d, E = m["d_model"], m["num_experts"]
        self.gate = torch.nn.Linear(d, E, bias=False)
        self.experts = torch.nn.ModuleList([Mlp(d, m["moe_ffn_hidden"], m["activation"]) for _ in range(E)])
        self.shared_expert = Mlp(d, m["moe_shared_expert_hidden"], m["activation"]) if m["moe_shared_expert_hidden"] else None
        if m["moe_shared_expert_gate"]:
            self.shared_expert_gate = torch.nn.Linear(d, 1, bias=False)
        self.register_buffer("expert_bias", torch.zeros(E))

    def route(self, logits):
        m, K = self.m, self.m["moe_top_k"]
        if m["moe_router_score"] == "sigmoid":
            scores = torch.sigmoid(logits)
            idx = torch.topk(scores + self.expert_bias, K, dim=-1).indices
            probs = scores.gather(1, idx)
            if m["moe_router_norm_topk_prob"]:
                probs = probs / (probs.sum(-1, keepdim=True) + 1e-20)
        elif m["moe_router_pre_softmax"]:
            scores = torch.softmax(logits, dim=-1)
            probs, idx = torch.topk(scores, K, dim=-1)
            if m["moe_router_norm_topk_prob"]:
                probs = probs / (probs.sum(-1, keepdim=True) + 1e-20)
        else:
            top, idx = torch.topk(logits, K, dim=-1)
            probs = torch.softmax(top, dim=-1)
        return idx, probs * m["moe_router_topk_scaling"]

    def keep_mask(self, idx, probs):
        """Capacity dropping (specs §7.6) as a [N, K] 0/1 mask."""
        m = self.m
        N, K = idx.shape
        E = m["num_experts"]
        C = min(math.ceil(N * K / E * m["moe_capacity_factor"]), N)
        keep = torch.zeros(N, K)
        for e in range(E):
            rows, slots = (idx == e).nonzero(as_tuple=True)
            if m["moe_drop_policy"] == "probs":
                p = probs.detach()[rows, slots]
                order = sorted(range(len(rows)), key=lambda i: (-float(p[i]), int(rows[i])))[:C]
            else:
                order = list(range(min(C, len(rows))))
            for i in order:
                keep[rows[i], slots[i]] = 1
        return keep

    def forward(self, x):
        m = self.m
        N, E, K = x.shape[0], m["num_experts"], m["moe_top_k"]
        logits = self.gate(x)
        aux = x.new_zeros(())
        if m["moe_z_loss_coeff"] > 0:
            aux = aux + m["moe_z_loss_coeff"] * torch.logsumexp(logits, -1).pow(2).mean()
        idx, probs = self.route(logits)
        if m["moe_capacity_factor"] > 0:
            probs = probs * self.keep_mask(idx, probs)
        if m["moe_aux_loss_coeff"] > 0:
            if m["moe_router_score"] == "sigmoid":
                s = torch.sigmoid(logits)
                s = s / (s.sum(-1, keepdim=True) + 1e-20)
            else:
                s = torch.softmax(logits, -1)
            counts = torch.zeros(E).scatter_add_(0, torch.topk(s, K, -1).indices.reshape(-1), torch.ones(N * K))
            aux = aux + m["moe_aux_loss_coeff"] * E / (K * N * N) * (counts.detach() * s.sum(0)).sum()
        out = torch.zeros_like(x)
        for e in range(E):
            rows, slots = (idx == e).nonzero(as_tuple=True)
            if len(rows):
                out = out.index_add(0, rows, self.experts[e](x[rows], probs[rows, slots]).to(out.dtype))
        if self.shared_expert is not None:
            sh = self.shared_expert(x)
            if m["moe_shared_expert_gate"]:
                sh = torch.sigmoid(self.shared_expert_gate(x)) * sh
            out = out + sh
        return out, aux


class DecoderLM(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        d = m["d_model"]
        self.pattern = pattern_of(m)
        self.embed_tokens = torch.nn.Embedding(m["vocab_size"], d)
        self.norms = torch.nn.ModuleList()
        self.blocks = torch.nn.ModuleList()
        for c in self.pattern:
            self.norms.append(Norm(d, m["norm"], m["norm_eps"]))
            self.blocks.append(Attention(m) if c == "*" else Mlp(d, m["ffn_hidden"], m["activation"]) if c == "-" else Moe(m))
        self.norm = Norm(d, m["norm"], m["norm_eps"])
        # model.head = value: one scalar per position from score.weight [1, d] in place of the LM head
        self.score = torch.nn.Linear(d, 1, bias=False) if m.get("head", "lm") == "value" else None
        self.lm_head = (None if m["tie_embeddings"] or self.score is not None
                        else torch.nn.Linear(d, m["vocab_size"], bias=False))

    def named_fivefold_parameters(self):
        """(fivefold global name, parameter) pairs."""
        out = [("model.embed_tokens.weight", self.embed_tokens.weight)]
        for j, c in enumerate(self.pattern):
            p = layer_prefix(self.pattern, j)
            norm = p + (".input_layernorm" if c == "*" else ".post_attention_layernorm")
            for n, t in self.norms[j].named_parameters():
                out.append((norm + "." + n, t))
            sub = ".self_attn." if c == "*" else ".mlp."
            for n, t in self.blocks[j].named_parameters():
                out.append((p + sub + n, t))
        for n, t in self.norm.named_parameters():
            out.append(("model.norm." + n, t))
        if self.lm_head is not None:
            out.append(("lm_head.weight", self.lm_head.weight))
        if self.score is not None:
            out.append(("score.weight", self.score.weight))
        return out

    def forward(self, tokens, targets=None):
        B, S = tokens.shape
        x = self.embed_tokens(tokens)
        aux = x.new_zeros(())
        for c, norm, block in zip(self.pattern, self.norms, self.blocks):
            h = norm(x)
            if c == "E":
                y, a = block(h.reshape(B * S, -1))
                x = x + y.view(B, S, -1)
                aux = aux + a
            else:
                x = x + block(h)
        h = self.norm(x)
        if self.score is not None:  # the value head: [B, S] values and the MoE losses
            return (h @ self.score.weight.t()).squeeze(-1), aux
        logits = h @ (self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight).t()
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(B * S, -1).float(), targets.view(-1), ignore_index=-1)
        return loss, aux


def read_safetensors(path):
    """{name: float32 numpy array} and the metadata of a safetensors file (F32 only)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", name
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[base + b:base + e], dtype=np.float32).reshape(t["shape"]).copy()
    return out, meta


def load_fivefold_weights(model, tensors):
    names = set()
    with torch.no_grad():
        for name, p in model.named_fivefold_parameters():
            assert name in tensors, "missing " + name
            assert tuple(tensors[name].shape) == tuple(p.shape), (name, tensors[name].shape, p.shape)
            p.copy_(torch.from_numpy(tensors[name]))
            names.add(name)
    return names
