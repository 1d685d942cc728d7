// Context parallelism for causal attention (specs/parallelism-and-moe.md §3), in two variants:
// all-gather-K/V (§3.4) and ring attention (§3.2, §3.3). The sequence is cut into 2 CP chunks of c = S / (2 CP) positions; CP rank r holds
// chunks r and 2CP-1-r (load-balanced: under the causal mask the early chunk is cheap and the late
// one expensive). Per sequence its local rows are [chunk r (c rows) | chunk 2CP-1-r (c rows)].
// All-gather: K and V of all ranks are all-gathered and put in position order, and each local query
// chunk attends to the keys up to its own positions. Backward: each rank's dK/dV over the whole
// sequence are partial sums, reduce-scattered back to the ranks that own those rows (the adjoint of
// the all-gather).
// Ring: K/V blocks travel around the CP ring, one neighbour per step, so no rank ever holds more
// than two blocks. Each step's partial attention (o_b, lse_b) of the local queries against the
// visiting block is merged by log-sum-exp: lse = log(e^lse + e^lse_b), o = o e^(lse_old - lse) +
// o_b e^(lse_b - lse). Backward walks the ring again with the final o and lse: each block's dK/dV
// travel with it and arrive home after the last step. Legend: B sequences, S whole length, L = 2c local rows per sequence, Hq/Hkv/dh heads.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace ff {

// Position in the whole sequence of local row i (0 <= i < 2c) on CP rank `rank` of `size`.
inline int64_t cp_position(int64_t i, int64_t local_len, int rank, int size) {
  const int64_t c = local_len / 2;
  return i < c ? rank * c + i : (2 * size - 1 - rank) * c + (i - c);
}

struct CpAttentionSaved {
  Tensor kv;        // all-gather: [B, S, 2 Hkv dh] K|V of the whole sequences, in position order;
                    // ring: [B L, 2 Hkv dh] this rank's K|V
  Tensor q[2];      // [B c, Hq dh] the two local query chunks
  Tensor o[2];      // [B c, Hq dh]
  Tensor lse[2];    // [B, Hq, c]
};

struct CpAttentionShape {
  int64_t B, L, Hq, Hkv, dh;
  float scale;
  bool ring = false;  // ring attention, else all-gather K/V
  bool bf16 = false;  // the block products on bf16-rounded operands (cpu::AttentionShape::bf16)
};

// qkv [B L, (Hq + 2 Hkv) dh] (after RoPE) -> o [B L, Hq dh] overwritten.
void cp_attention_forward(CpAttentionSaved& s, float* o, const float* qkv, const CpAttentionShape& sh,
                          const Communicator& cp, Arena& arena);
// dO [B L, Hq dh] -> dqkv [B L, (Hq + 2 Hkv) dh] overwritten.
void cp_attention_backward(float* dqkv, const float* dO, const CpAttentionSaved& s, const CpAttentionShape& sh,
                           const Communicator& cp, Arena& scratch);

}  // namespace ff
