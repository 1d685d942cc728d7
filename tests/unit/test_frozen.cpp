// Frozen parameters (Param::trainable = false): no gradient buffer, no optimizer moments, values
// untouched by a step, and the trainable parameters' gradients bit-identical to those of the same
// model with nothing frozen (a frozen weight's gradient GEMM is skipped, nothing else changes).
#include <gtest/gtest.h>

#include <cstring>

#include "models/config.h"
#include "models/decoder_lm.h"
#include "optim/optimizer.h"
#include "train/objective.h"
#include "test_util.h"

namespace ff {
namespace {

ModelConfig moe_config() {
  ModelConfig c = test::small_model("*E*-", 31);
  c.moe_shared_expert_hidden = 8;
  c.norm = NormKind::layernorm1p;
  return c;
}

TEST(Frozen, NoGradientNoMomentsAndTheRestUnchanged) {
  const ModelConfig c = moe_config();
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  // The embedding, every norm, the first attention block, the experts and the router of layer 1.
  const std::vector<std::string> frozen = {"model.embed_tokens.*", "*norm*", "model.layers.0.self_attn.*",
                                           "model.layers.1.mlp.experts.*", "model.layers.1.mlp.gate.*"};
  DecoderLM full(c, grid, 4), part(c, grid, 4, frozen);
  int64_t frozen_elements = 0, frozen_tensors = 0;
  for (const Param& p : part.params().params()) {
    EXPECT_EQ(p.trainable, !matches_any(p.name, frozen)) << p.name;
    if (!p.trainable) {
      EXPECT_EQ(p.grad, nullptr) << p.name;
      frozen_elements += p.numel();
      ++frozen_tensors;
    }
  }
  EXPECT_GE(frozen_tensors, 8);
  EXPECT_EQ(part.params().numel(), full.params().numel());
  EXPECT_EQ(part.params().grad_numel(), full.params().grad_numel() - frozen_elements);
  OptimizerConfig oc;
  oc.warmup_steps = 0;
  AdamW opt_full(full.params(), oc), opt_part(part.params(), oc);
  EXPECT_EQ(opt_part.exp_avg().size() + static_cast<size_t>(frozen_elements), opt_full.exp_avg().size());

  Rng rng(5, "frozen-batch");
  std::vector<int32_t> tokens, targets;
  for (int64_t i = 0; i < 2 * c.seq_len; ++i) {
    tokens.push_back(static_cast<int32_t>(rng.below(31)));
    targets.push_back(static_cast<int32_t>(rng.below(31)));
  }
  auto mf = full.new_micro_batch(), mp = part.new_micro_batch();
  full.params().zero_grads();
  part.params().zero_grads();
  const double lf = forward_mean_ce(full, *mf, tokens.data(), targets.data(), 2, c.seq_len).loss;
  const double lp = forward_mean_ce(part, *mp, tokens.data(), targets.data(), 2, c.seq_len).loss;
  EXPECT_EQ(lf, lp);
  backward_mean_ce(full, *mf, 1.0f);
  backward_mean_ce(part, *mp, 1.0f);
  for (size_t i = 0; i < part.params().params().size(); ++i) {
    const Param &p = part.params().params()[i], &q = full.params().params()[i];
    if (p.trainable) {
      EXPECT_EQ(0, std::memcmp(p.grad, q.grad, sizeof(float) * static_cast<size_t>(p.numel()))) << p.name;
    }
  }
  std::vector<float> before(part.params().values(), part.params().values() + part.params().numel());
  opt_part.step(oc.lr, world, world);
  for (const Param& p : part.params().params()) {
    const float* was = before.data() + p.offset;
    const bool moved = std::memcmp(was, p.value, sizeof(float) * static_cast<size_t>(p.numel())) != 0;
    EXPECT_EQ(moved, p.trainable) << p.name;
  }
}

}  // namespace
}  // namespace ff

namespace ff {
namespace {

// A fused matrix (q | k | v, Mamba2's in_proj segments and conv rows) is one GEMM operand: its
// parts must be frozen together, or the model refuses to build (one clear error).
TEST(Frozen, PartsOfAFusedMatrixFreezeTogether) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelConfig c = model_preset("nemotron-h-small");
  try {
    DecoderLM m(c, grid, 1, {"*.self_attn.k_proj.weight"});
    FAIL() << "freezing k_proj alone was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'model.layers.5.self_attn.q_proj.weight' and "
                                         "'model.layers.5.self_attn.k_proj.weight' are parts of one fused matrix"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(DecoderLM(c, grid, 1, {"*.mixer.conv1d_B.*"}), UserError);
  EXPECT_THROW(DecoderLM(c, grid, 1, {"*.mixer.in_proj_dt.weight"}), UserError);
  DecoderLM whole(c, grid, 1, {"*.self_attn.*", "*.mixer.in_proj_*", "*.mixer.conv1d_*"});  // whole matrices: fine
  int64_t frozen = 0;
  for (const Param& p : whole.params().params()) frozen += !p.trainable;
  EXPECT_EQ(frozen, 4 + 4 * (5 + 6));
}

}  // namespace
}  // namespace ff
