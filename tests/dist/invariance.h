// Helpers shared by the invariance tests (test_invariance.cpp, test_objective_invariance.cpp):
// the data of a step, the comparison of a rank's slice with the reference's whole tensor (its
// tolerance is derived in test_invariance.cpp's header), layouts and the tiny models.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "models/decoder_lm.h"
#include "parallel/grid.h"
#include "tiny_model.h"

namespace ff::test {

struct Batch {
  std::vector<int32_t> tokens, targets;
};

// The micro-batch of data-parallel replica `replica` at step `step`: the same on every layout.
inline Batch micro_batch(int64_t step, int64_t replica, int64_t B, const ModelConfig& c) {
  Rng rng(77, "dist-batch", static_cast<uint64_t>(step * 1000 + replica));
  Batch b;
  for (int64_t i = 0; i < B * c.seq_len; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size))));
    b.targets.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size))));
  }
  return b;
}

// Compares this rank's slice of a gradient (or of the values) with the same slice of the
// reference's whole tensor. allowance: an extra bound per element of the whole tensor (or null).
inline ::testing::AssertionResult tensors_match(const Param& p, const Param& ref, bool values = false, double tol = 1e-4,
                                         const std::vector<double>* allowance = nullptr) {
  const int64_t cols = p.global_shape.rank == 2 ? p.global_shape[1] : p.global_shape.numel();
  const int64_t lc = p.global_shape.rank == 2 ? p.local_shape[1] : p.local_shape.numel();
  const int64_t r0 = p.global_shape.rank == 2 ? p.local_offset[0] : 0;
  const int64_t c0 = p.global_shape.rank == 2 ? p.local_offset[1] : (p.local_offset.rank ? p.local_offset[0] : 0);
  double scale = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) scale = std::max(scale, std::fabs(double((values ? ref.value : ref.grad)[i])));
  double worst = 0;  // the largest excess over the bound
  int64_t worst_i = -1;
  for (int64_t i = 0; i < p.numel(); ++i) {
    const float* mine = values ? p.value : p.grad;
    const int64_t g = (r0 + i / lc) * cols + c0 + i % lc;
    const double want = (values ? ref.value : ref.grad)[g];
    const double bound = tol * scale + 1e-7 + (allowance ? (*allowance)[static_cast<size_t>(g)] : 0.0);
    const double excess = std::fabs(double(mine[i]) - want) - bound;
    if (excess > worst) {
      worst = excess;
      worst_i = i;
    }
  }
  if (worst_i < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << p.name << ": element " << worst_i << " is " << worst
                                       << " past its bound (max |ref| " << scale << ")";
}

// Sets this rank's slice of p to the reference's values (the index mapping of tensors_match).
inline void copy_reference_values(Param& p, const Param& ref) {
  const int64_t cols = p.global_shape.rank == 2 ? p.global_shape[1] : p.global_shape.numel();
  const int64_t lc = p.global_shape.rank == 2 ? p.local_shape[1] : p.local_shape.numel();
  const int64_t r0 = p.global_shape.rank == 2 ? p.local_offset[0] : 0;
  const int64_t c0 = p.global_shape.rank == 2 ? p.local_offset[1] : (p.local_offset.rank ? p.local_offset[0] : 0);
  for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = ref.value[(r0 + i / lc) * cols + c0 + i % lc];
}

inline ParallelConfig layout(int64_t ep, MoeDispatcher d = MoeDispatcher::alltoall) {
  ParallelConfig pc;
  pc.ep = ep;
  pc.moe_dispatcher = d;
  return pc;
}

inline ParallelConfig tensor_layout(int64_t tp, bool sp, int64_t ep = 1, int64_t etp = 1) {
  ParallelConfig pc;
  pc.tp = tp;
  pc.sequence_parallel = sp;
  pc.ep = ep;
  pc.etp = etp;
  return pc;
}

inline ModelConfig tiny_dense() {
  ModelConfig c = tiny_moe();
  c.num_experts = 0;
  c.ffn_hidden = 20;
  c.layer_pattern = "*-*-";
  return c;
}

// A Nemotron-H-style hybrid: Mamba2 (4 heads of 3 channels in 2 groups, state 5, chunk 3 that
// divides no sequence), attention without RoPE, a squared-ReLU MLP; with moe, the MLP is an MoE.
// Δ is drawn in [0.05, 0.2]: the scan's decays exp(sum Δ A) (A up to 16) turn a relative rounding
// error e of Δ into about |sum Δ A| e of the states, at most 8 x 0.2 x 16 = 26 e here, which the
// gradient tolerance of 1e-4 of the largest value covers.
inline ModelConfig tiny_hybrid(bool moe = false) {
  ModelConfig c = tiny_moe();
  c.num_experts = moe ? 4 : 0;
  c.ffn_hidden = 20;
  c.layer_pattern = moe ? "M*ME" : "M*M-";
  c.position_embedding = PositionEmbedding::none;
  c.activation = Activation::squared_relu;
  c.mamba_num_heads = 4;
  c.mamba_head_dim = 3;
  c.mamba_groups = 2;
  c.mamba_state = 5;
  c.mamba_chunk = 3;
  c.mamba_dt_min = 0.05;
  c.mamba_dt_max = 0.2;
  return c;
}

inline int world_size() { return Communicator::world().size(); }
// The largest EP over all ranks that the tiny model's 4 experts allow.
inline int64_t max_ep() { return std::min(world_size(), 4); }

}  // namespace ff::test
