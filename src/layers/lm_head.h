// The language-model head (vocabulary-parallel over TP): logits = x W^T over this rank's shard of
// the vocabulary, [N, V/TP], and for each row with a target the log-probability of that target,
// log p(t | x) = logit_t - lse(logits) with the softmax over the whole vocabulary across the shards
// (layers/vocab_parallel.h). What a token-level objective consumes is that per-row log-prob; what
// it returns is d objective / d logp per row, from which backward forms the logit gradient
// dlogits = dlogp * (onehot(t) - softmax) and the input and weight gradients.
// With chunk_rows > 0 (training), the logits of one chunk of rows exist at a time; backward
// recomputes each chunk's logits (one more GEMM) instead of keeping [N, V/TP].
// Legend: N rows (the full rows of the TP region), D width, Vl = V / TP vocabulary ids held here.
#pragma once
#include <cstdint>

#include "core/param.h"
#include "layers/compute.h"
#include "layers/tensor_parallel.h"

namespace ff {

class LmHead {
 public:
  // weight [V, D] sliced over the vocabulary by TP (the embedding's parameter when tied).
  LmHead(Param* weight, Compute& compute, TensorParallel tp, int64_t vocab, int64_t chunk_rows);

  struct Saved {
    Tensor x_op;    // [N, D] the head's input, as a GEMM operand
    Tensor logits;  // [C, Vl]: all N rows (C = N), or the last chunk's rows when chunked
    Tensor logp;    // [N] log p(target) per row; 0 where the target is -1 (training only)
    Tensor lse;     // [N]
    const int32_t* targets = nullptr;
  };
  // x_op [N, D]. targets null: the logits of all N rows only (inference). Otherwise logp.
  void forward(Saved& s, const Tensor& x_op, const int32_t* targets, int64_t N, Arena& arena);
  // dx[N, D] OVERWRITTEN: this shard's partial input gradient (summed over TP by the caller's
  // region exit); the weight gradient accumulates. dlogp[N]: the objective's gradient (0 on rows
  // without a target). Consumes the saved logits; a second backward needs a new forward.
  void backward(float* dx, const float* dlogp, Saved& s, int64_t N, Arena& scratch);

  // Distribution objectives (distillation): the gradient of the saved logits themselves,
  // dlogits[N, Vl] (this shard's columns; may be the saved logits, overwritten in place). Needs a
  // forward that kept all N rows (no chunk_rows).
  void backward_logits(float* dx, const float* dlogits, Saved& s, int64_t N, Arena& scratch);

  int64_t vocab_local() const { return weight_->local_shape[0]; }

 private:
  Param* weight_;
  Compute* compute_;
  TensorParallel tp_;
  int64_t V_, chunk_rows_;
};

}  // namespace ff
