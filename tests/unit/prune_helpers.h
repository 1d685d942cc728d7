// Helpers of the pruning tests (test_prune.cpp, test_prune_moe.cpp): a one-process model's
// tensors as the pruning source, a pruned model filled from a plan, logits and the calibration
// statistics of one batch.
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/rng.h"
#include "layers/importance.h"
#include "models/decoder_lm.h"
#include "models/prune_keep.h"
#include "recipes/prune/prune.h"

namespace ff::test {

// The model's global tensors by name (one process holds them whole).
inline TensorSource source_of(DecoderLM& m) {
  return [&m](const std::string& name, HostTensor& out) {
    const Param* p = m.params().find(name);
    if (!p) return false;
    out.shape = p->global_shape.vec();
    out.data.assign(p->value, p->value + p->numel());
    return true;
  };
}

// Fills every parameter of `to` through pruned_tensor.
inline void fill_pruned(DecoderLM& to, const PrunePlan& plan, const TensorSource& src) {
  for (Param& p : to.params().params()) {
    HostTensor t;
    ASSERT_TRUE(pruned_tensor(plan, src, p.name, t)) << p.name;
    ASSERT_EQ(t.shape, p.global_shape.vec()) << p.name;
    std::copy(t.data.begin(), t.data.end(), p.value);
  }
  to.mark_values_changed();
}

inline std::vector<float> logits_of(DecoderLM& m, const std::vector<int32_t>& tokens, int64_t B, int64_t S) {
  auto mb = m.new_micro_batch();
  m.forward(*mb, tokens.data(), nullptr, B, S);
  return {m.logits(*mb), m.logits(*mb) + B * S * m.config().vocab_size};
}

inline ImportanceStats calibration_of(DecoderLM& m, const std::vector<int32_t>& tokens, int64_t B, int64_t S) {
  ImportanceStats st;
  m.declare_importance(st);
  auto mb = m.new_micro_batch();
  m.forward(*mb, tokens.data(), nullptr, B, S);
  m.add_importance(*mb, st);
  st.end_batch();
  Communicator self = Communicator::self();
  st.finish(self);
  return st;
}

inline std::vector<int32_t> random_tokens(int64_t n, int64_t V) {
  Rng rng(4, "tokens");
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
  return t;
}

}  // namespace ff::test
