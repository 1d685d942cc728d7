#include "layers/lm_head.h"

#include <algorithm>

#include "kernels/cpu/softmax_ce.h"
#include "layers/vocab_parallel.h"

namespace ff {

LmHead::LmHead(Param* weight, Compute& compute, TensorParallel tp, int64_t vocab, int64_t chunk_rows)
    : weight_(weight), compute_(&compute), tp_(tp), V_(vocab), chunk_rows_(chunk_rows) {}

void LmHead::forward(Saved& s, const Tensor& x_op, const int32_t* targets, int64_t N, Arena& arena) {
  const int64_t D = weight_->local_shape[1], Vl = vocab_local(), v0 = weight_->local_offset[0];
  s.x_op = x_op;
  s.targets = targets;
  const int64_t C = targets && chunk_rows_ > 0 ? std::min(chunk_rows_, N) : N;
  s.logits = arena.alloc(Shape{C, Vl});
  if (!targets) {
    s.logp = Tensor{};
    compute_->linear_forward(s.logits.f32(), x_op, Weight::of(*weight_), N, D, Vl);
    return;
  }
  s.logp = arena.alloc(Shape{N});
  s.lse = arena.alloc(Shape{N});
  float* logp = s.logp.f32();
  for (int64_t r0 = 0; r0 < N; r0 += C) {
    const int64_t rows = std::min(C, N - r0);
    float* logits = s.logits.f32();
    compute_->linear_forward(logits, operand_rows(x_op, r0, rows, D), Weight::of(*weight_), rows, D, Vl);
    // The kernels give the cross-entropy lse - logit_t, which is -log p(t).
    if (tp_.active())
      vocab_parallel_cross_entropy_forward(logp + r0, s.lse.f32() + r0, logits, targets + r0, rows, Vl, v0, V_,
                                           *tp_.group);
    else
      cpu::cross_entropy_forward(logp + r0, s.lse.f32() + r0, logits, targets + r0, rows, V_);
  }
  for (int64_t n = 0; n < N; ++n) logp[n] = -logp[n];
}

void LmHead::backward(float* dx, const float* dlogp, Saved& s, int64_t N, Arena& scratch) {
  FF_CHECK(s.targets != nullptr && !s.logp.empty(), "LmHead::backward needs a forward with targets first");
  const int64_t D = weight_->local_shape[1], Vl = vocab_local(), v0 = weight_->local_offset[0];
  const int64_t C = s.logits.shape[0];  // rows per chunk; C < N: recompute each chunk's logits
  // The kernels take the gradient of the cross-entropy -logp: dloss = -dlogp.
  float* dloss = scratch.alloc_f32(N);
  for (int64_t n = 0; n < N; ++n) dloss[n] = s.targets[n] >= 0 ? -dlogp[n] : 0.0f;
  float* dlogits = s.logits.f32();  // the logits, consumed in place
  const Tensor buffer = compute_->alloc_operand(C, Vl, scratch);
  for (int64_t r0 = 0; r0 < N; r0 += C) {
    const int64_t rows = std::min(C, N - r0);
    const Tensor x = operand_rows(s.x_op, r0, rows, D);
    if (C < N) compute_->linear_forward(dlogits, x, Weight::of(*weight_), rows, D, Vl);
    if (tp_.active())
      vocab_parallel_cross_entropy_backward(dlogits, dlogits, s.lse.f32() + r0, s.targets + r0, dloss + r0, rows, Vl,
                                            v0);
    else
      cpu::cross_entropy_backward(dlogits, dlogits, s.lse.f32() + r0, s.targets + r0, dloss + r0, rows, V_);
    compute_->linear_backward(dx + r0 * D, Weight::of(*weight_), compute_->operand(dlogits, rows, Vl, buffer), x, rows,
                              D, Vl, false);
  }
  s.logp = Tensor{};  // the logits were consumed
}

void LmHead::backward_logits(float* dx, const float* dlogits, Saved& s, int64_t N, Arena& scratch) {
  FF_CHECK(s.logits.shape[0] == N, "a distribution objective needs the logits of every row: set model.head_chunk_rows = 0");
  const int64_t D = weight_->local_shape[1], Vl = vocab_local();
  compute_->linear_backward(dx, Weight::of(*weight_), compute_->operand(dlogits, N, Vl, scratch), s.x_op, N, D, Vl,
                            false);
  s.logp = Tensor{};  // consumed
}

}  // namespace ff
