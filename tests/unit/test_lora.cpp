// LoRA (layers/linear.h): a fresh adapter (B = 0) leaves the model's outputs bit-identical; the
// adapters' gradients pass finite differences; merged weights reproduce the adapter forward; the
// base gets no gradient and no optimizer state; dropout acts in training only. The same for the
// routed experts' adapters (layers/moe/experts.h, lora_targets experts.*).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "models/config.h"
#include "models/decoder_lm.h"
#include "optim/optimizer.h"
#include "train/lora_merge.h"
#include "train/objective.h"
#include "test_util.h"

namespace ff {
namespace {

ModelConfig base_config() {
  ModelConfig c = test::small_model("*-*E", 29);
  c.moe_shared_expert_hidden = 10;
  return c;
}

ModelConfig lora_config() {
  ModelConfig c = base_config();
  c.lora_rank = 3;
  c.lora_alpha = 6;
  c.lora_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  return c;
}

// Adapters on the routed experts (all three projections) and on one attention projection. The
// MoE layer is the last block, so the adapters change nothing a router sees: the routing is the
// same whatever their values (finite differences never cross a routing decision).
ModelConfig expert_lora_config() {
  ModelConfig c = lora_config();
  c.lora_targets = "o_proj,experts";
  return c;
}

struct Batch {
  std::vector<int32_t> tokens, targets;
};
Batch batch(const ModelConfig& c, int64_t B) {
  Rng rng(9, "lora-batch");
  Batch b;
  for (int64_t i = 0; i < B * c.seq_len; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size))));
    b.targets.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size))));
  }
  return b;
}

std::vector<float> logits(DecoderLM& m, const Batch& b, int64_t B) {
  auto mb = m.new_micro_batch();
  m.forward(*mb, b.tokens.data(), nullptr, B, m.config().seq_len);
  const float* l = m.logits(*mb);
  return {l, l + B * m.config().seq_len * m.config().vocab_size};
}

// Every adapter's B drawn at random, so that both factors carry gradient.
void randomise_adapters(DecoderLM& m) {
  int k = 0;
  for (Param& p : m.params().params())
    if (p.name.find(".lora_B.") != std::string::npos) {
      const auto r = test::randn(static_cast<size_t>(p.numel()), 100 + k++, 0.3f);
      std::copy(r.begin(), r.end(), p.value);
    }
  m.mark_values_changed();
}

TEST(Lora, FreshAdaptersLeaveTheOutputsBitIdentical) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  for (const ModelConfig& c : {lora_config(), expert_lora_config()}) {
    DecoderLM base(base_config(), grid, 4), adapted(c, grid, 4);
    const Batch b = batch(base_config(), 2);
    const auto want = logits(base, b, 2), got = logits(adapted, b, 2);
    ASSERT_EQ(want.size(), got.size());
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), sizeof(float) * want.size())) << c.lora_targets;
  }
}

// Adapters switched off (the DPO / PPO reference under LoRA): trained adapters (B != 0) leave the
// outputs exactly the base model's, bit for bit (the same GEMMs on the same values), and switched
// back on they act again.
TEST(Lora, AdaptersSwitchedOffGiveTheBaseModel) {
  for (const ModelConfig& lc : {lora_config(), expert_lora_config()}) {
    SCOPED_TRACE(lc.lora_targets);
    Communicator world = Communicator::world();
    ParallelGrid grid(world, ParallelConfig{});
    DecoderLM base(base_config(), grid, 4), adapted(lc, grid, 4);
    randomise_adapters(adapted);
    const Batch b = batch(base_config(), 2);
    const auto want = logits(base, b, 2), with = logits(adapted, b, 2);
    adapted.set_adapters(false);
    const auto without = logits(adapted, b, 2);
    ASSERT_EQ(want.size(), without.size());
    EXPECT_EQ(0, std::memcmp(want.data(), without.data(), sizeof(float) * want.size()));
    EXPECT_NE(0, std::memcmp(want.data(), with.data(), sizeof(float) * want.size()));
    // A backward with adapters off gives them no gradient.
    auto mb = adapted.new_micro_batch();
    adapted.params().zero_grads();
    forward_mean_ce(adapted, *mb, b.tokens.data(), b.targets.data(), 2, base_config().seq_len);
    backward_mean_ce(adapted, *mb, 1.0f);
    for (const Param& p : adapted.params().params())
      if (p.trainable) {
        for (int64_t i = 0; i < p.numel(); ++i) ASSERT_EQ(p.grad[i], 0.0f) << p.name;
      }
    adapted.set_adapters(true);
    const auto again = logits(adapted, b, 2);
    EXPECT_EQ(0, std::memcmp(with.data(), again.data(), sizeof(float) * with.size()));
  }
}

TEST(Lora, BaseIsFrozenAndOnlyAdaptersHoldOptimizerState) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  const ModelConfig c = lora_config();
  DecoderLM m(c, grid, 4);
  int64_t adapter_elements = 0, adapters = 0;
  for (const Param& p : m.params().params()) {
    const bool adapter = is_adapter_name(p.name);
    EXPECT_EQ(p.trainable, adapter) << p.name;
    EXPECT_EQ(p.grad == nullptr, !adapter) << p.name;
    adapter_elements += adapter ? p.numel() : 0;
    adapters += adapter;
  }
  EXPECT_EQ(adapters, 2 * (4 * 2 + 3 * 2));  // A and B: q, k, v, o in two blocks; gate, up, down of the MLP and the shared expert
  EXPECT_EQ(m.params().numel(), count_parameters(c));
  EXPECT_EQ(m.params().grad_numel(), adapter_elements);
  OptimizerConfig oc;
  AdamW opt(m.params(), oc);
  // Optimizer memory: two fp32 moments per adapter element, none for the base.
  EXPECT_EQ(static_cast<int64_t>((opt.exp_avg().size() + opt.exp_avg_sq().size()) * sizeof(float)),
            8 * adapter_elements);
  EXPECT_LT(adapter_elements, (m.params().numel() - adapter_elements) / 4);  // even at this toy size
}

// Checks every trainable parameter's gradient against central differences; returns how many.
int check_adapter_gradients(const ModelConfig& c) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM m(c, grid, 4);
  randomise_adapters(m);
  const Batch b = batch(c, 2);
  auto mb = m.new_micro_batch();
  auto loss = [&] { return forward_mean_ce(m, *mb, b.tokens.data(), b.targets.data(), 2, c.seq_len).loss; };
  m.params().zero_grads();
  loss();
  backward_mean_ce(m, *mb, 1.0f);
  int checked = 0;
  for (Param& p : m.params().params()) {
    if (!p.trainable) continue;
    const auto u = test::randn(static_cast<size_t>(p.numel()), 50 + checked);
    std::vector<float> saved(p.value, p.value + p.numel());
    const double analytic = test::dot(p.grad, u.data(), u.size());
    const float h = 1e-3f;
    auto at = [&](float sign) {
      for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = saved[static_cast<size_t>(i)] + sign * h * u[static_cast<size_t>(i)];
      return loss();
    };
    const double numeric = (at(1) - at(-1)) / (2.0 * h);
    std::memcpy(p.value, saved.data(), sizeof(float) * saved.size());
    // Central differences in fp32: O(h^2) truncation plus the loss's rounding (~1e-7 relative) / h.
    EXPECT_NEAR(analytic, numeric, 2e-3 + 3e-2 * std::fabs(numeric)) << p.name;
    EXPECT_NE(analytic, 0.0) << p.name;
    ++checked;
  }
  return checked;
}

TEST(Lora, AdapterGradientsMatchFiniteDifferences) { EXPECT_EQ(check_adapter_gradients(lora_config()), 28); }

// The routed experts' adapters: A_e and B_e of gate, up and down for each of the 4 experts, and
// o_proj's pair in the two attention blocks.
TEST(Lora, ExpertAdapterGradientsMatchFiniteDifferences) {
  EXPECT_EQ(check_adapter_gradients(expert_lora_config()), 2 * 3 * 4 + 2 * 2);
}

void expect_merge_reproduces_forward(const ModelConfig& c) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM m(c, grid, 4);
  randomise_adapters(m);
  TensorMap tensors;
  for (const Param& p : m.params().params())
    tensors[p.name] = {p.global_shape.vec(), std::vector<float>(p.value, p.value + p.numel())};
  ModelConfig merged_cfg = c;
  merge_lora(merged_cfg, tensors);
  EXPECT_EQ(merged_cfg.lora_rank, 0);
  DecoderLM merged(merged_cfg, grid, 99);
  ASSERT_EQ(tensors.size(), merged.params().params().size());
  for (Param& p : merged.params().params()) {
    const auto& t = tensors.at(p.name);
    std::copy(t.data.begin(), t.data.end(), p.value);
  }
  merged.mark_values_changed();
  const Batch b = batch(c, 2);
  const auto want = logits(m, b, 2), got = logits(merged, b, 2);
  // x (W + s B A)^T against x W^T + s (x A^T) B^T: the same sums in another order, fp32.
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(double(want[i])));
  }
  EXPECT_LE(worst, 1e-5 * scale) << "scale " << scale;
  EXPECT_GT(scale, 0.1);
}

TEST(Lora, MergedWeightsReproduceTheAdapterForward) { expect_merge_reproduces_forward(lora_config()); }

// The experts' adapter pairs "<p>.experts.{e}.<proj>.lora_A/B.weight" fold into their expert's
// "<p>.experts.{e}.<proj>.weight" (the MoE layer's experts are merged one by one).
TEST(Lora, MergedExpertWeightsReproduceTheAdapterForward) { expect_merge_reproduces_forward(expert_lora_config()); }

// With expert adapters the base experts are frozen: no gradient buffer, and after a backward
// their values unchanged; only the adapters (expert parameters themselves) train.
TEST(Lora, ExpertBaseIsFrozenAndTheAdaptersAreExpertParameters) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  const ModelConfig c = expert_lora_config();
  DecoderLM m(c, grid, 4);
  int64_t expert_adapters = 0, adapter_elements = 0;
  for (const Param& p : m.params().params()) {
    const bool adapter = is_adapter_name(p.name), in_experts = p.name.find(".experts.") != std::string::npos;
    EXPECT_EQ(p.trainable, adapter) << p.name;
    EXPECT_EQ(p.grad == nullptr, !adapter) << p.name;
    if (in_experts) {
      EXPECT_TRUE(p.expert) << p.name;
    }
    EXPECT_FALSE(p.tp_partial_grad || p.etp_partial_grad) << p.name;  // one process: nothing to sum
    expert_adapters += adapter && in_experts;
    adapter_elements += adapter ? p.numel() : 0;
  }
  EXPECT_EQ(expert_adapters, 2 * 3 * 4);  // A and B of gate, up, down for 4 experts
  EXPECT_EQ(m.params().grad_numel(), adapter_elements);
  EXPECT_EQ(m.params().numel(), count_parameters(c));
  // The experts' adapters follow every base weight of the layer in registration order.
  const auto& ps = m.params().params();
  size_t last_base = 0, first_adapter = ps.size();
  for (size_t i = 0; i < ps.size(); ++i)
    if (ps[i].name.find(".experts.") != std::string::npos) {
      if (is_adapter_name(ps[i].name))
        first_adapter = std::min(first_adapter, i);
      else
        last_base = i;
    }
  EXPECT_LT(last_base, first_adapter);
  // A training step's backward leaves the frozen base without gradient and every adapter with one.
  randomise_adapters(m);
  const Batch b = batch(c, 2);
  auto mb = m.new_micro_batch();
  m.params().zero_grads();
  forward_mean_ce(m, *mb, b.tokens.data(), b.targets.data(), 2, c.seq_len);
  backward_mean_ce(m, *mb, 1.0f);
  for (const Param& p : m.params().params())
    if (p.trainable && p.name.find(".experts.") != std::string::npos) {
      double sq = 0;
      for (int64_t i = 0; i < p.numel(); ++i) sq += double(p.grad[i]) * p.grad[i];
      EXPECT_GT(sq, 0.0) << p.name;
    }
}

// "experts" names the three projections of the routed experts: the same parameters as listing them.
TEST(Lora, ExpertsShorthandNamesTheThreeProjections) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelConfig a = expert_lora_config(), b = a;
  b.lora_targets = "o_proj,experts.gate_proj,experts.up_proj,experts.down_proj";
  DecoderLM ma(a, grid, 4), mb(b, grid, 4);
  ASSERT_EQ(ma.params().params().size(), mb.params().params().size());
  for (size_t i = 0; i < ma.params().params().size(); ++i)
    EXPECT_EQ(ma.params().params()[i].name, mb.params().params()[i].name);
  b.lora_targets = "experts.down_proj";
  DecoderLM down(b, grid, 4);
  int64_t n = 0;
  for (const Param& p : down.params().params()) n += is_adapter_name(p.name);
  EXPECT_EQ(n, 2 * 4);
}

TEST(Lora, DropoutActsInTrainingOnly) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelConfig c = lora_config(), no_drop = lora_config();
  c.lora_dropout = 0.5;
  DecoderLM m(c, grid, 4), ref(no_drop, grid, 4);
  randomise_adapters(m);
  randomise_adapters(ref);
  const Batch b = batch(c, 2);
  auto mb = m.new_micro_batch();
  m.set_training(false);
  const auto eval_logits = logits(m, b, 2);
  EXPECT_EQ(eval_logits, logits(ref, b, 2));  // no dropout when evaluating
  m.set_training(true);
  const auto train_logits = logits(m, b, 2);
  EXPECT_NE(train_logits, eval_logits);
  EXPECT_NE(logits(m, b, 2), train_logits);  // a new mask each forward
}

TEST(Lora, TargetsThatDoNotExistAreErrors) {
  ModelConfig c = lora_config();
  c.lora_targets = "q_proj,expert,w_proj,experts.w1";
  const auto e = c.validate();
  ASSERT_EQ(e.size(), 3u);
  EXPECT_NE(e[0].find("'expert' is not a linear of this model"), std::string::npos) << e[0];
  EXPECT_NE(e[1].find("'w_proj'"), std::string::npos) << e[1];
  EXPECT_NE(e[2].find("'experts.w1'"), std::string::npos) << e[2];
  EXPECT_NE(e[2].find("experts.gate_proj"), std::string::npos) << e[2];  // the choices are named
  c = lora_config();
  c.layer_pattern = "*E*E";
  c.moe_shared_expert_hidden = 0;
  c.lora_targets = "down_proj";
  ASSERT_EQ(c.validate().size(), 1u);
  EXPECT_NE(c.validate()[0].find("no dense MLP or shared expert"), std::string::npos);
  // The experts' targets need MoE layers; experts.gate_proj needs SwiGLU experts.
  c = lora_config();
  c.layer_pattern = "*-*-";
  c.num_experts = 0;
  c.lora_targets = "experts.up_proj";
  ASSERT_EQ(c.validate().size(), 1u);
  EXPECT_NE(c.validate()[0].find("'experts.up_proj': the model has no MoE layer"), std::string::npos) << c.validate()[0];
  c = expert_lora_config();
  c.activation = Activation::gelu;
  c.lora_targets = "experts.gate_proj";
  ASSERT_EQ(c.validate().size(), 1u);
  EXPECT_NE(c.validate()[0].find("'experts.gate_proj' is not a linear"), std::string::npos) << c.validate()[0];
}

// Dropout on the routed experts' adapters is refused (the rows' order depends on the layout), by name.
TEST(Lora, DropoutOnExpertAdaptersIsAnError) {
  ModelConfig c = expert_lora_config();
  c.lora_dropout = 0.1;
  const auto e = c.validate();
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("model.lora_dropout"), std::string::npos) << e[0];
  EXPECT_NE(e[0].find("experts"), std::string::npos) << e[0];
  c.lora_targets = "o_proj";  // dense adapters keep their dropout
  EXPECT_TRUE(c.validate().empty());
}

}  // namespace
}  // namespace ff
