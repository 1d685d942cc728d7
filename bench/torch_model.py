"""An independent PyTorch implementation of fivefold's decoder LM, built from a fivefold run
config (the JSON that `fivefold train --print_config` prints or that a model file carries):
'*' attention, '-' MLP, 'E' MoE and 'M' Mamba2 layers (Nemotron-H, specs/methods.md §3).

Two uses: the oracle of the parity tests (tests/parity/), which load fivefold's weights into this
model and compare losses and gradients computed by autograd; and the peer of the benchmarks
(bench/torch_peer.py), which times training steps of the same model.

The MoE auxiliary losses are added to the loss here; fivefold injects their gradients at the
router instead (specs/parallelism-and-moe.md §6.6). Both give the same parameter gradients.
The Mamba2 scan is the chunked SSD form (ssd_chunked) in plain tensor ops, its backward by
autograd; sequences are not packed here (each row is one example from position 0).
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

    def select(self, v):
        """Top-K of the selection values v [N, E]; with groups (moe_router_groups G, M per token)
        only among the experts of each row's M groups of largest sum of their top K / M values."""
        m, K = self.m, self.m["moe_top_k"]
        G, M = m.get("moe_router_groups", 0), m.get("moe_router_group_topk", 0)
        if G == 0:
            return torch.topk(v, K, dim=-1).indices
        per = v.shape[-1] // G
        group_score = v.view(-1, G, per).topk(K // M, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_score).scatter(1, group_score.topk(M, dim=-1).indices, 1.0).bool()
        return v.masked_fill(~keep.repeat_interleave(per, 1), float("-inf")).topk(K, dim=-1).indices

    def route(self, logits):
        m, K = self.m, self.m["moe_top_k"]
        if m["moe_router_score"] == "sigmoid":
            scores = torch.sigmoid(logits)
            idx = self.select((scores + self.expert_bias).detach())
            probs = scores.gather(1, idx)
            if m["moe_router_norm_topk_prob"]:
                probs = probs / (probs.sum(-1, keepdim=True) + 1e-20)
        elif m["moe_router_pre_softmax"]:
            scores = torch.softmax(logits, dim=-1)
            idx = self.select(scores.detach())
            probs = scores.gather(1, idx)
            if m["moe_router_norm_topk_prob"]:
                probs = probs / (probs.sum(-1, keepdim=True) + 1e-20)
        else:
            idx = self.select(logits.detach())
            probs = torch.softmax(logits.gather(1, idx), dim=-1)
        return idx, probs * m["moe_router_topk_scaling"]

    def balancing_loss(self, s, B):
        """The moe_load_balancing loss of one micro-batch of B sequences (specs §6.3-6.4); with one
        micro-batch the global-batch loss is the micro-batch loss."""
        m = self.m
        N, E, K, alpha = s.shape[0], m["num_experts"], m["moe_top_k"], m["moe_aux_loss_coeff"]
        kind = m.get("moe_load_balancing", "aux_loss")
        c = torch.zeros(N, E, dtype=s.dtype).scatter(1, torch.topk(s.detach(), K, -1).indices, 1.0)
        if kind in ("aux_loss", "global_aux_loss"):
            return alpha * E / (K * N * N) * (c.sum(0) * s.sum(0)).sum()
        if kind == "seq_aux_loss":
            S = N // B
            return alpha / B * E / (K * S * S) * (c.view(B, S, E).sum(1) * s.view(B, S, E).sum(1)).sum()
        return s.new_zeros(())

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

    def forward(self, x, B=1):
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
            aux = aux + self.balancing_loss(s, B)
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


def segment_sums(a):
    """seg[..., l, j] = a[j+1] + ... + a[l] for j <= l, -inf above the diagonal (a [..., Q]).
    Built from masked cumulative sums, not as differences of one cumsum, so a long chunk loses
    no precision to cancellation and exp(seg) never overflows."""
    Q = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, Q)  # rows[..., i, j] = a[i]
    strict = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)  # i > j
    seg = rows.masked_fill(~strict, 0).cumsum(dim=-2)  # sum over j < i <= l
    lower = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(0)
    return seg.masked_fill(~lower, float("-inf"))


def ssd_chunked(x, delta, A, Bh, Ch, chunk):
    """The SSD scan S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_t^T, y_t = S_t C_t (no D term), computed in
    chunks of `chunk` positions (specs/methods.md §3.3). x [b, S, H, P], delta [b, S, H], A [H],
    Bh, Ch [b, S, H, N] (already expanded from groups to heads). Returns y [b, S, H, P]. S need not
    be a multiple of the chunk: the tail is padded with Δ = 0, x = B = C = 0, which adds nothing
    to any state, and the padded outputs are dropped."""
    b, S, H, P = x.shape
    N = Bh.shape[-1]
    Q = chunk
    pad = (-S) % Q
    if pad:
        x, delta, Bh, Ch = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, delta, Bh, Ch))
    c = (S + pad) // Q
    x, Bh, Ch = (t.reshape(b, c, Q, H, -1) for t in (x, Bh, Ch))
    delta = delta.reshape(b, c, Q, H)
    xt = x * delta[..., None]                       # x̃ = Δ x
    a = (delta * A).permute(0, 3, 1, 2)             # [b, H, c, Q], a = Δ A <= 0
    s = a.cumsum(dim=-1)                            # inclusive cumsum inside each chunk
    # Intra-chunk (quadratic): Y_diag[l] = sum_{j<=l} (C_l . B_j) exp(s_l - s_j) x̃_j.
    L = segment_sums(a).exp()                       # [b, H, c, l, j]
    G = torch.einsum("bclhn,bcjhn->bhclj", Ch, Bh)
    y_diag = torch.einsum("bhclj,bcjhp->bclhp", G * L, xt)
    # Each chunk's own state: S_c = sum_j exp(s_last - s_j) x̃_j B_j^T.
    w = (s[..., -1:] - s).exp()                     # [b, H, c, Q]
    own = torch.einsum("bhcj,bcjhp,bcjhn->bchpn", w, xt, Bh)
    # Inter-chunk recurrence: H_c = exp(s_last(c)) H_{c-1} + S_c from H_{-1} = 0; chunk c reads H_{c-1}.
    decay = s[..., -1].exp()                        # [b, H, c]
    state = x.new_zeros(b, H, P, N)
    entering = []
    for k in range(c):
        entering.append(state)
        state = decay[:, :, k, None, None] * state + own[:, k]
    prev = torch.stack(entering, dim=1)             # [b, c, H, P, N]
    # Off-diagonal: Y_off[l] = exp(s_l) H_{c-1} C_l.
    y_off = torch.einsum("bchpn,bclhn,bhcl->bclhp", prev, Ch, s.exp())
    return (y_diag + y_off).reshape(b, c * Q, H, P)[:, :S]


class DepthwiseCausalConv(torch.nn.Module):
    """c[t, k] = bias[k] + sum_j weight[k, j] u[t - (K-1) + j, k], zero left padding."""

    def __init__(self, channels, K):
        super().__init__()
        bound = 1.0 / math.sqrt(K)  # PyTorch's Conv1d default for a depthwise conv (fan_in K)
        self.weight = torch.nn.Parameter(torch.empty(channels, K).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.empty(channels).uniform_(-bound, bound))

    def forward(self, u):  # u [b, S, C]
        K = self.weight.shape[1]
        y = F.conv1d(u.transpose(1, 2), self.weight[:, None, :], self.bias, padding=K - 1, groups=u.shape[-1])
        return y[..., :u.shape[1]].transpose(1, 2)


class Mamba2(torch.nn.Module):
    """The Mamba2 mixer (specs/methods.md §3.2): z | x | B | C | dt projections, causal depthwise
    conv + SiLU over x, B, C, Δ = softplus(dt + dt_bias) (clamped when mamba_dt_limit_max > 0),
    the chunked SSD scan with A = -exp(A_log) and the D skip, the gated RMSNorm (norm after the
    gate, per group of d_inner / G channels), out_proj. Head h reads the B, C of group h // (H / G)."""

    def __init__(self, m):
        super().__init__()
        d = m["d_model"]
        self.H, self.P, self.G, self.N = m["mamba_num_heads"], m["mamba_head_dim"], m["mamba_groups"], m["mamba_state"]
        self.chunk, self.eps = m["mamba_chunk"], m["norm_eps"]
        self.dt_lo, self.dt_hi = m["mamba_dt_limit_min"], m["mamba_dt_limit_max"]
        di, gn, K = self.H * self.P, self.G * self.N, m["mamba_conv_kernel"]
        self.in_proj_z = torch.nn.Linear(d, di, bias=False)
        self.in_proj_x = torch.nn.Linear(d, di, bias=False)
        self.in_proj_B = torch.nn.Linear(d, gn, bias=False)
        self.in_proj_C = torch.nn.Linear(d, gn, bias=False)
        self.in_proj_dt = torch.nn.Linear(d, self.H, bias=False)
        self.conv1d_x = DepthwiseCausalConv(di, K)
        self.conv1d_B = DepthwiseCausalConv(gn, K)
        self.conv1d_C = DepthwiseCausalConv(gn, K)
        # Init (only the benchmark peer uses it; the parity tests load fivefold's weights):
        # dt log-uniform in [dt_min, dt_max] above the floor, dt_bias its inverse softplus; A ~ U[1, 16].
        lo, hi = math.log(m["mamba_dt_min"]), math.log(m["mamba_dt_max"])
        dt = (lo + (hi - lo) * torch.rand(self.H)).exp().clamp(min=m["mamba_dt_init_floor"])
        self.dt_bias = torch.nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = torch.nn.Parameter(torch.empty(self.H).uniform_(1, 16).log())
        self.D = torch.nn.Parameter(torch.ones(self.H))
        self.norm = torch.nn.Module()
        self.norm.weight = torch.nn.Parameter(torch.ones(di))
        self.out_proj = torch.nn.Linear(di, d, bias=False)

    def delta(self, dt_raw):
        dlt = F.softplus(dt_raw + self.dt_bias)
        return dlt.clamp(self.dt_lo, self.dt_hi) if self.dt_hi > 0 else dlt

    def forward(self, u):  # u [b, S, D]
        b, S, _ = u.shape
        H, P, G, N = self.H, self.P, self.G, self.N
        z = self.in_proj_z(u)
        x = F.silu(self.conv1d_x(self.in_proj_x(u)))
        Bg = F.silu(self.conv1d_B(self.in_proj_B(u))).view(b, S, G, N)
        Cg = F.silu(self.conv1d_C(self.in_proj_C(u))).view(b, S, G, N)
        dt_raw = self.in_proj_dt(u)
        group = torch.arange(H, device=u.device) // (H // G)  # contiguous blocks of H / G heads share B, C
        # Δ, the scan and the norm in fp32 at least (float64 in the parity tests), also under bf16 autocast.
        ft = torch.promote_types(u.dtype, torch.float32)
        with torch.autocast(u.device.type, enabled=False):
            dlt = self.delta(dt_raw.to(ft))
            xs = x.to(ft).view(b, S, H, P)
            y = ssd_chunked(xs, dlt.to(ft), -self.A_log.to(ft).exp(), Bg.to(ft)[:, :, group], Cg.to(ft)[:, :, group],
                            self.chunk)
            y = y + self.D.to(ft)[:, None] * xs
            v = (y.reshape(b, S, H * P) * F.silu(z.to(ft))).view(b, S, G, -1)
            v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)
            v = v.reshape(b, S, H * P) * self.norm.weight.to(ft)
        return self.out_proj(v.to(u.dtype))


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
            self.blocks.append(Attention(m) if c == "*" else Mlp(d, m["ffn_hidden"], m["activation"]) if c == "-"
                               else Mamba2(m) if c == "M" else Moe(m))
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
            norm = p + (".input_layernorm" if c in "*M" else ".post_attention_layernorm")
            for n, t in self.norms[j].named_parameters():
                out.append((norm + "." + n, t))
            sub = {"*": ".self_attn.", "M": ".mixer."}.get(c, ".mlp.")
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
                y, a = block(h.reshape(B * S, -1), B)
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
