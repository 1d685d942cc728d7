// Causal grouped-query attention, fp32 data (block products in fp32, or bf16 with s.bf16). Legend: B sequences, S positions, Hq query heads, Hkv
// KV heads (query head h reads KV head h / (Hq/Hkv)), dh head dim, ld row stride of q/k/v.
// q(b,s,h,:) = q + (b*S + s)*ld + h*dh   (same for k, v with their heads).
// o is [B*S, Hq*dh] contiguous. lse[B, Hq, S] = log-sum-exp of each scaled score row (saved).
// Memory: per thread, score blocks of at most 64 x S rows (forward: one; backward: two, P and
// dP), never a full S x S matrix. Forward runs one (b, query head) per task, backward one
// (b, KV head) per task; backward recomputes the probabilities from q, k and lse.
#pragma once
#include <cstdint>

namespace ff::cpu {

struct AttentionShape {
  int64_t B, S, Hq, Hkv, dh;
  int64_t ld_q, ld_kv;  // row strides (floats) of q and of k/v
  float scale;          // usually 1/sqrt(dh)
  // Context parallelism: the S query rows of a sequence may be a chunk of it, and the S_kv key rows
  // another. Query row i has position q_offset + i, key row j position k_offset + j, and a query
  // sees the keys at positions up to its own (k/v/dk/dv use S_kv rows per sequence). A query that
  // sees no key here gets o = 0 and lse = -inf (ring attention merges it away). S_kv = 0 means S.
  int64_t S_kv = 0, q_offset = 0, k_offset = 0;
  // The block products on bf16-rounded operands with fp32 accumulation (small_gemm_bf16, with
  // each head's keys and values packed once per task); scores, softmax, lse and outputs stay fp32.
  bool bf16 = false;
};

// Floats of scratch the two passes need with `threads` OpenMP threads (per thread: the forward's
// score block, or the backward's P, dP and D blocks). Callers that pass a workspace of this size
// keep the step free of allocations; a null workspace is allocated inside the call.
int64_t attention_workspace_floats(const AttentionShape& s, int threads);

// o = softmax(scale * q k^T + causal mask) v.
void attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                       const AttentionShape& s, float* workspace = nullptr);
// dq, dk, dv are OVERWRITTEN; they use the same strides as q (ld_q) and k/v (ld_kv), so they may
// point into one fused dqkv buffer. All heads of a KV group are summed into dk/dv.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* o, const float* lse,
                        const AttentionShape& s, float* workspace = nullptr);

}  // namespace ff::cpu
