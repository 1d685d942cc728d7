"""The PyTorch peer of `fivefold generate`: greedy decoding of a fivefold model file with a KV cache
of its own, timed, so that fivefold's generation speed has an independent reference.

Usage: torch_generate.py --model FILE [--prompt TEXT] [--tokens N] [--batch B] [--threads T]
                         [--repeats R] [--check] [--expect FILE]
The model is bench/torch_model.DecoderLM built from the file's config (metadata
"fivefold_config", its "model" section) with the file's weights; the tokenizer must be the byte
tokenizer (token ids = the prompt's UTF-8 bytes, EOD = 256), which the peer implements itself.
B copies of the prompt are decoded together, as `fivefold generate --prompts` does with B lines.

The decoding follows fivefold's (src/train/generation.cpp) at temperature 0: one prefill of the
prompt, then one position per step; each new token is the argmax of the newest position's logits
over the tokenizer's vocabulary (the first max on ties); a sequence ends at EOD or after N new
tokens. The cache holds every layer's keys (after RoPE) and values for all positions, so
prompt + N - 1 positions must fit model.seq_len: fivefold restarts the context beyond that, which
the peer does not (a benchmark should not reach it, or the two sides do different work).

--check also decodes by full recomputation (torch_model's DecoderLM.forward over the whole context
at every step) and asserts that it gives the same tokens, printing the largest logit difference.
--expect FILE compares the first sequence with fivefold's greedy output for the same prompt: FILE
holds the stdout of `fivefold generate --temperature 0 --output text` (the prompt, the new text,
a newline); exits 1 if the tokens differ.

Prints the first sequence's new token ids and text, one line per timed run, then
  result: X tokens/s (median of R) | PyTorch V, fp32, T threads, batch B, N new tokens per sequence
tokens/s counts the new tokens of the whole batch over the time from the prefill to the last token,
as fivefold's "generated ... tokens/s" line does. One untimed warm-up run comes first, so that
PyTorch's one-time initialisation is not timed.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model  # noqa: E402

BYTE_VOCAB, BYTE_EOD = 257, 256  # src/io/tokenizer.h: ids 0..255 are bytes, 256 is EOD

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True, help="a fivefold model file (.safetensors)")
ap.add_argument("--prompt", default="In the beginning")
ap.add_argument("--tokens", type=int, default=200, help="new tokens per sequence, at most")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=1, help="copies of the prompt decoded together")
ap.add_argument("--repeats", type=int, default=5, help="timed runs")
ap.add_argument("--check", action="store_true", help="assert the cached decode equals full recomputation")
ap.add_argument("--expect", help="fivefold's text output for the same prompt, to compare the tokens with")
args = ap.parse_args()
if args.tokens < 1 or args.threads < 1 or args.batch < 1 or args.repeats < 1:
    sys.exit("torch_generate: --tokens, --threads, --batch and --repeats must be >= 1")

torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)

tensors, meta = torch_model.read_safetensors(args.model)
if "fivefold_config" not in meta:
    sys.exit("torch_generate: %s has no fivefold_config metadata; give a model file fivefold wrote" % args.model)
tokenizer = json.loads(meta["fivefold_tokenizer"])["type"] if "fivefold_tokenizer" in meta else "byte"
if tokenizer != "byte":
    sys.exit("torch_generate: the model's tokenizer is %s; the peer implements the byte tokenizer only" % tokenizer)
# Inference computes no losses: with the MoE loss coefficients at 0 the Moe block skips them (they
# do not change its output).
m = dict(json.loads(meta["fivefold_config"])["model"], moe_aux_loss_coeff=0.0, moe_z_loss_coeff=0.0)
pattern = torch_model.pattern_of(m)
if set(pattern) - set("*-E") or m.get("lora_rank", 0) > 0:
    sys.exit("torch_generate: the model has parts the peer does not implement (layer pattern %r, lora_rank %s)"
             % (pattern, m.get("lora_rank")))
model = torch_model.DecoderLM(m).eval()
loaded = torch_model.load_fivefold_weights(model, tensors)
with torch.no_grad():  # aux-loss-free balancing: the expert bias is a buffer the file carries
    for j, c in enumerate(pattern):
        name = torch_model.layer_prefix(pattern, j) + ".mlp.gate.expert_bias"
        if c == "E" and name in tensors:
            model.blocks[j].expert_bias.copy_(torch.from_numpy(tensors[name]))
            loaded.add(name)
unused = sorted(set(tensors) - loaded)
if unused:
    sys.exit("torch_generate: the model file has tensors the peer does not use: %s" % ", ".join(unused[:5]))

prompt = list(args.prompt.encode("utf-8"))
if not prompt:
    sys.exit("torch_generate: the prompt is empty; give at least one character")
positions = len(prompt) + args.tokens - 1  # the last new token is never fed back
if positions > m["seq_len"]:
    sys.exit("torch_generate: prompt (%d tokens) + %d new tokens - 1 = %d positions exceed model.seq_len %d: "
             "fivefold would restart the context there, the peer does not"
             % (len(prompt), args.tokens, positions, m["seq_len"]))
vocab = min(m["vocab_size"], BYTE_VOCAB)  # fivefold samples among the tokenizer's ids only


def rope_tables(att, n):
    """cos, sin [n, rot/2] of positions 0..n-1, computed as torch_model.Attention.apply_rope does."""
    half = att.rot // 2
    inv = att.base ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / att.rot)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def rotate(att, x, cos, sin):
    """Rotate-half RoPE of x [B, H, T, dh] with the tables of its positions (cos, sin [T, rot/2])."""
    half = att.rot // 2
    a, b, rest = x[..., :half], x[..., half:att.rot], x[..., att.rot:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)


class Cache:
    """Keys (after RoPE) and values [B, Hkv, capacity, dh] of every attention layer."""

    def __init__(self, B, capacity):
        self.length = 0
        self.k, self.v = {}, {}
        self.cos = self.sin = None
        for j, c in enumerate(pattern):
            if c == "*":
                att = model.blocks[j]
                self.k[j] = torch.empty(B, att.hkv, capacity, att.dh)
                self.v[j] = torch.empty(B, att.hkv, capacity, att.dh)
                if att.rope and self.cos is None:  # every attention layer has the same rotation
                    self.cos, self.sin = rope_tables(att, capacity)


def cached_attention(att, cache, j, x):
    """Attention of T new rows x [B, T, d] at positions cache.length ..: their keys and values join
    the cache; each query attends to every cached position up to its own (GQA: query head h reads
    key/value head h // (Hq / Hkv), as repeat_interleave in torch_model)."""
    B, T, _ = x.shape
    p0, p1 = cache.length, cache.length + T
    q = att.q_proj(x).view(B, T, att.hq, att.dh).transpose(1, 2)
    k = att.k_proj(x).view(B, T, att.hkv, att.dh).transpose(1, 2)
    v = att.v_proj(x).view(B, T, att.hkv, att.dh).transpose(1, 2)
    if att.rope:
        cos, sin = cache.cos[p0:p1], cache.sin[p0:p1]
        q, k = rotate(att, q, cos, sin), rotate(att, k, cos, sin)
    cache.k[j][:, :, p0:p1], cache.v[j][:, :, p0:p1] = k, v
    keys, values = cache.k[j][:, :, :p1], cache.v[j][:, :, :p1]  # [B, Hkv, p1, dh]
    g = att.hq // att.hkv
    s = q.reshape(B, att.hkv, g * T, att.dh) @ keys.transpose(-1, -2) / math.sqrt(att.dh)  # [B, Hkv, g*T, p1]
    if T > 1:  # query t (position p0 + t) sees keys 0 .. p0 + t
        future = torch.arange(p1)[None, :] > (p0 + torch.arange(T))[:, None]
        s = s.view(B, att.hkv, g, T, p1).masked_fill(future, float("-inf")).view(B, att.hkv, g * T, p1)
    o = (torch.softmax(s, dim=-1) @ values).view(B, att.hq, T, att.dh)
    return att.o_proj(o.transpose(1, 2).reshape(B, T, att.hq * att.dh))


def cached_logits(cache, tokens):
    """Feeds tokens [B, T] at the cache's next positions; returns the newest position's logits [B, V]."""
    B, T = tokens.shape
    x = model.embed_tokens(tokens)
    for j, (c, norm, block) in enumerate(zip(pattern, model.norms, model.blocks)):
        h = norm(x)
        if c == "*":
            x = x + cached_attention(block, cache, j, h)
        elif c == "E":
            x = x + block(h.reshape(B * T, -1))[0].view(B, T, -1)
        else:
            x = x + block(h)
    cache.length += T
    h = model.norm(x[:, -1])
    return h @ (model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight).t()


def full_logits(context):
    """The newest position's logits [B, V] from torch_model's forward over the whole context."""
    return model(context)[:, -1]


def decode(n, cached, keep_logits=False):
    """Greedy decoding of args.batch copies of the prompt, at most n new tokens each. Returns the new
    tokens [B, n] (EOD and what follows it: EOD), how many are real (before EOD) over the batch, and
    the logits of every step when keep_logits."""
    B = args.batch
    context = torch.tensor([prompt] * B)
    cache = Cache(B, len(prompt) + n - 1) if cached else None
    out = torch.full((B, n), BYTE_EOD, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    steps_logits = []
    feed = context
    for i in range(n):
        logits = cached_logits(cache, feed) if cached else full_logits(context)
        if keep_logits:
            steps_logits.append(logits[:, :vocab])
        nxt = logits[:, :vocab].argmax(-1).masked_fill(done, BYTE_EOD)
        out[:, i] = nxt
        done |= nxt == BYTE_EOD
        if i == n - 1 or bool(done.all()):
            break
        feed = nxt[:, None]  # a finished sequence keeps the lockstep on EOD; its tokens are not used
        if not cached:
            context = torch.cat([context, feed], dim=1)
    real = int((out != BYTE_EOD).sum())
    return out, real, steps_logits


def text_of(ids):
    return bytes(ids).decode("utf-8", errors="replace")


with torch.inference_mode():
    decode(min(args.tokens, 4), cached=True)  # warm-up
    rates = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        tokens, real, _ = decode(args.tokens, cached=True)
        dt = time.perf_counter() - t0
        rates.append(real / dt)
        print("  run %d: %d tokens in %.3f s: %.1f tokens/s" % (r + 1, real, dt, rates[-1]))
    first = [t for t in tokens[0].tolist() if t != BYTE_EOD]
    print("tokens:", " ".join(map(str, first)))
    print("text:", json.dumps(text_of(first)))

    if args.check:
        cached_tokens, _, cached_steps = decode(args.tokens, cached=True, keep_logits=True)
        full_tokens, _, full_steps = decode(args.tokens, cached=False, keep_logits=True)
        differ = (cached_tokens != full_tokens).any(0).nonzero()
        assert len(differ) == 0, "check: the cached decode differs from full recomputation at new token %d" \
            % int(differ[0])
        gap = max(float((a - b).abs().max()) for a, b in zip(cached_steps, full_steps))
        print("check: cached decode = full recomputation (%d steps, %d sequences; max |logit difference| %.2e)"
              % (len(cached_steps), args.batch, gap))

    if args.expect:
        with open(args.expect, "rb") as f:
            shown = f.read()
        head = args.prompt.encode("utf-8")
        if not shown.startswith(head):
            sys.exit("expect: %s does not start with the prompt; give fivefold's --output text for --prompt %r"
                     % (args.expect, args.prompt))
        theirs = list(shown[len(head):].removesuffix(b"\n"))
        n = next((i for i, (a, b) in enumerate(zip(theirs, first)) if a != b), min(len(theirs), len(first)))
        if theirs == first:
            print("expect: greedy tokens equal fivefold's (%d tokens)" % len(first))
        else:
            print("expect: greedy tokens DIFFER from fivefold's at new token %d of %d / %d (fivefold %s, peer %s)"
                  % (n, len(theirs), len(first), theirs[n:n + 5], first[n:n + 5]))
            sys.exit(1)

print("result: %.1f tokens/s (median of %d) | PyTorch %s, fp32, %d threads, batch %d, %d new tokens per sequence"
      % (statistics.median(rates), args.repeats, torch.__version__, args.threads, args.batch, args.tokens))
