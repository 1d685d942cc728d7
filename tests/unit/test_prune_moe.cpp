// Pruning the routed experts of MoE layers (specs/methods.md §3.5: an expert's importance is the
// mean over the tokens routed to it of ||expert output||_2) and their neurons: the statistics
// against a recomputation from the weights, keeping every expert is bitwise the identity, an
// expert whose down projection is zero goes first (a neuron that never fires too), and the pruned
// layer computes what the unpruned one did when its router never chose the dropped experts.
#include <gtest/gtest.h>

#include <cmath>

#include "models/decoder_lm.h"
#include "prune_helpers.h"
#include "recipes/prune/prune.h"

namespace ff {
namespace {

using namespace test;

// One MoE layer or attention + MoE: 4 experts, top-2, squared ReLU (fc1 is up_proj alone), dropless,
// top-K then softmax over the K chosen logits (the defaults).
ModelConfig tiny_moe(const std::string& pattern) {
  ModelConfig c;
  c.vocab_size = 29;
  c.d_model = 8;
  c.layer_pattern = pattern;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.seq_len = 6;
  c.num_experts = 4;
  c.moe_top_k = 2;
  c.moe_ffn_hidden = 6;
  c.moe_aux_loss_coeff = 0;
  c.activation = Activation::squared_relu;
  c.position_embedding = PositionEmbedding::none;
  c.init_std = 0.3;
  return c;
}

Param& param(DecoderLM& m, const std::string& name) {
  Param* p = m.params().find(name);
  EXPECT_NE(p, nullptr) << name;
  return *p;
}

// The statistic recomputed in fp64 from the layer's input xn (its pre-norm's output), the routing
// the forward chose and the weights: slot (n, j) of expert e = idx[n, j] has gating prob
// p = softmax over the K chosen logits l = xn W_gate^T, and output y = down (relu(up xn))^2 p;
// expert e's importance is the mean of ||y||_2 over its slots; neuron f of expert e scores
// sqrt(sum over its slots of a_f^2), a = (relu(up xn))^2 p the input of down.
TEST(PruneMoe, ExpertImportanceEqualsTheMeanOutputNormOfItsTokens) {
  Communicator self = Communicator::self();
  ParallelGrid grid(self, ParallelConfig{});
  const ModelConfig c = tiny_moe("E");
  DecoderLM m(c, grid, 3);
  const int64_t B = 2, S = c.seq_len, N = B * S, D = c.d_model, E = c.num_experts, K = c.moe_top_k, F = c.moe_ffn_hidden;
  const auto tokens = random_tokens(N, c.vocab_size);
  ImportanceStats st;
  m.declare_importance(st);
  auto mb = m.new_micro_batch();
  m.forward(*mb, tokens.data(), nullptr, B, S);
  m.add_importance(*mb, st);
  st.end_batch();
  st.finish(self);

  const float* xn = mb->norms[0].y.f32();
  const std::vector<int32_t> idx = m.routed_experts(*mb);
  ASSERT_EQ(static_cast<int64_t>(idx.size()), N * K);
  const Param& gate = param(m, "model.layers.0.mlp.gate.weight");
  std::vector<double> sum(static_cast<size_t>(E), 0.0), count(static_cast<size_t>(E), 0.0);
  std::vector<double> squares(static_cast<size_t>(E * F), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double logit[2], z = 0;
    for (int64_t j = 0; j < K; ++j) {
      logit[j] = 0;
      for (int64_t k = 0; k < D; ++k) logit[j] += double(xn[n * D + k]) * gate.value[idx[n * K + j] * D + k];
    }
    for (int64_t j = 0; j < K; ++j) z += std::exp(logit[j]);
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = idx[static_cast<size_t>(n * K + j)];
      const std::string ex = "model.layers.0.mlp.experts." + std::to_string(e);
      const Param& up = param(m, ex + ".up_proj.weight");
      const Param& down = param(m, ex + ".down_proj.weight");
      const double p = std::exp(logit[j]) / z;
      std::vector<double> a(static_cast<size_t>(F));
      for (int64_t f = 0; f < F; ++f) {
        double h = 0;
        for (int64_t k = 0; k < D; ++k) h += double(up.value[f * D + k]) * xn[n * D + k];
        a[static_cast<size_t>(f)] = (h > 0 ? h * h : 0.0) * p;
        squares[static_cast<size_t>(e * F + f)] += a[static_cast<size_t>(f)] * a[static_cast<size_t>(f)];
      }
      double sq = 0;
      for (int64_t k = 0; k < D; ++k) {
        double y = 0;
        for (int64_t f = 0; f < F; ++f) y += double(down.value[k * F + f]) * a[static_cast<size_t>(f)];
        sq += y * y;
      }
      sum[static_cast<size_t>(e)] += std::sqrt(sq);
      count[static_cast<size_t>(e)] += 1;
    }
  }
  const auto& raw = st.raw_means().at("model.layers.0.mlp.experts");
  const std::vector<double> got = st.means("model.layers.0.mlp.experts");
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(raw.count[static_cast<size_t>(e)], count[static_cast<size_t>(e)]) << "expert " << e;
    ASSERT_GT(count[static_cast<size_t>(e)], 0) << "expert " << e << " is never routed: choose another seed";
    const double want = sum[static_cast<size_t>(e)] / count[static_cast<size_t>(e)];
    // fp32 forward against fp64: GEMMs of 8 and 6 terms, an exp and a square, each rounding to a
    // relative 6e-8 of its magnitude; 1e-5 of the value bounds their sum with a wide margin.
    EXPECT_NEAR(got[static_cast<size_t>(e)], want, 1e-5 * want) << "expert " << e;
  }
  const std::vector<double> neurons = st.scores("model.layers.0.mlp.experts.neurons");
  for (int64_t i = 0; i < E * F; ++i) {
    const double want = std::sqrt(squares[static_cast<size_t>(i)]);
    EXPECT_NEAR(neurons[static_cast<size_t>(i)], want, 1e-5 * want) << "expert " << i / F << " neuron " << i % F;
  }
}

// Keeping every expert (and every other dimension) gives the model back bit for bit; the shared
// expert is carried whole.
TEST(PruneMoe, KeepingEveryExpertIsBitwiseTheIdentity) {
  Communicator self = Communicator::self();
  ParallelGrid grid(self, ParallelConfig{});
  ModelConfig c = tiny_moe("*E");
  c.moe_shared_expert_hidden = 4;
  c.moe_shared_expert_gate = true;
  DecoderLM m(c, grid, 5);
  const auto tokens = random_tokens(2 * c.seq_len, c.vocab_size);
  PruneTargets t;
  t.num_experts = c.num_experts;
  const PrunePlan plan = plan_pruning(c, calibration_of(m, tokens, 2, c.seq_len), t);
  ASSERT_EQ(plan.keep[1].experts, (std::vector<int64_t>{0, 1, 2, 3}));
  DecoderLM same(plan.to, grid, 6);
  fill_pruned(same, plan, source_of(m));
  for (const Param& p : same.params().params()) {
    const Param* q = m.params().find(p.name);
    ASSERT_NE(q, nullptr) << p.name;
    for (int64_t i = 0; i < p.numel(); ++i) ASSERT_EQ(p.value[i], q->value[i]) << p.name;
  }
  EXPECT_EQ(logits_of(same, tokens, 2, c.seq_len), logits_of(m, tokens, 2, c.seq_len));
}

// An expert whose down projection is zero outputs zero for every token routed to it: its
// importance is exactly 0 while it is routed, and it is the one dropped. The pruned layer's
// router rows and experts are the kept ones, in order.
TEST(PruneMoe, AnExpertWithAZeroDownProjectionIsPrunedFirst) {
  Communicator self = Communicator::self();
  ParallelGrid grid(self, ParallelConfig{});
  const ModelConfig c = tiny_moe("*E");
  DecoderLM m(c, grid, 5);
  Param& down = param(m, "model.layers.0.mlp.experts.1.down_proj.weight");
  std::fill(down.value, down.value + down.numel(), 0.0f);
  m.mark_values_changed();
  const auto tokens = random_tokens(2 * c.seq_len, c.vocab_size);
  const ImportanceStats st = calibration_of(m, tokens, 2, c.seq_len);
  const std::vector<double> score = st.means("model.layers.0.mlp.experts");
  EXPECT_GT(st.raw_means().at("model.layers.0.mlp.experts").count[1], 0);  // routed, yet worthless
  EXPECT_EQ(score[1], 0.0);
  for (size_t e : {size_t(0), size_t(2), size_t(3)}) EXPECT_GT(score[e], 0.0) << "expert " << e;
  PruneTargets t;
  t.num_experts = 3;
  const PrunePlan plan = plan_pruning(c, st, t);
  EXPECT_EQ(plan.to.num_experts, 3);
  ASSERT_EQ(plan.keep[1].experts, (std::vector<int64_t>{0, 2, 3}));
  DecoderLM pruned(plan.to, grid, 6);
  fill_pruned(pruned, plan, source_of(m));
  const Param& g = param(pruned, "model.layers.0.mlp.gate.weight");
  const Param& g0 = param(m, "model.layers.0.mlp.gate.weight");
  ASSERT_EQ(g.global_shape.vec(), (std::vector<int64_t>{3, c.d_model}));
  for (int64_t k = 0; k < c.d_model; ++k) EXPECT_EQ(g.value[1 * c.d_model + k], g0.value[2 * c.d_model + k]);
  const Param& up = param(pruned, "model.layers.0.mlp.experts.2.up_proj.weight");
  const Param& up0 = param(m, "model.layers.0.mlp.experts.3.up_proj.weight");
  for (int64_t i = 0; i < up.numel(); ++i) ASSERT_EQ(up.value[i], up0.value[i]);
  // The aux-loss-free expert bias [E] (a state buffer, where the source has one) keeps its rows too.
  const TensorSource with_bias = [&](const std::string& name, HostTensor& out) {
    if (name != "model.layers.0.mlp.gate.expert_bias") return source_of(m)(name, out);
    out.shape = {c.num_experts};
    out.data = {10, 11, 12, 13};
    return true;
  };
  HostTensor bias;
  ASSERT_TRUE(pruned_tensor(plan, with_bias, "model.layers.0.mlp.gate.expert_bias", bias));
  EXPECT_EQ(bias.data, (std::vector<float>{10, 12, 13}));
  EXPECT_FALSE(pruned_tensor(plan, source_of(m), "model.layers.0.mlp.gate.expert_bias", bias));  // none: none
}

// A neuron whose up_proj row is zero never fires (squared ReLU of 0): it scores 0 and is the one
// its expert drops; every expert keeps its own best F' neurons, and the pruned expert's up rows
// and down columns are those neurons' (with every embedding channel kept).
TEST(PruneMoe, ANeuronThatNeverFiresIsTheOneItsExpertDrops) {
  Communicator self = Communicator::self();
  ParallelGrid grid(self, ParallelConfig{});
  const ModelConfig c = tiny_moe("*E");
  const int64_t D = c.d_model, F = c.moe_ffn_hidden;
  DecoderLM m(c, grid, 5);
  Param& up = param(m, "model.layers.0.mlp.experts.2.up_proj.weight");
  std::fill(up.value + 3 * D, up.value + 4 * D, 0.0f);
  m.mark_values_changed();
  const auto tokens = random_tokens(2 * c.seq_len, c.vocab_size);
  const ImportanceStats st = calibration_of(m, tokens, 2, c.seq_len);
  const std::vector<double> neurons = st.scores("model.layers.0.mlp.experts.neurons");
  EXPECT_EQ(neurons[static_cast<size_t>(2 * F + 3)], 0.0);
  EXPECT_GT(st.raw_means().at("model.layers.0.mlp.experts").count[2], 0);
  PruneTargets t;
  t.moe_ffn_hidden = F - 1;
  const PrunePlan plan = plan_pruning(c, st, t);
  EXPECT_EQ(plan.to.moe_ffn_hidden, F - 1);
  ASSERT_EQ(plan.keep[1].experts, (std::vector<int64_t>{0, 1, 2, 3}));
  ASSERT_EQ(static_cast<int64_t>(plan.keep[1].hidden.size()), 4 * (F - 1));
  const std::vector<int64_t> kept(plan.keep[1].hidden.begin() + 2 * (F - 1), plan.keep[1].hidden.begin() + 3 * (F - 1));
  EXPECT_EQ(kept, (std::vector<int64_t>{0, 1, 2, 4, 5}));
  DecoderLM pruned(plan.to, grid, 6);
  fill_pruned(pruned, plan, source_of(m));
  const Param& pu = param(pruned, "model.layers.0.mlp.experts.2.up_proj.weight");
  const Param& pd = param(pruned, "model.layers.0.mlp.experts.2.down_proj.weight");
  const Param& d0 = param(m, "model.layers.0.mlp.experts.2.down_proj.weight");
  ASSERT_EQ(pd.global_shape.vec(), (std::vector<int64_t>{D, F - 1}));
  for (int64_t j = 0; j < F - 1; ++j) {
    const int64_t f = kept[static_cast<size_t>(j)];
    for (int64_t k = 0; k < D; ++k) {
      EXPECT_EQ(pu.value[j * D + k], up.value[f * D + k]);
      EXPECT_EQ(pd.value[k * (F - 1) + j], d0.value[k * F + f]);
    }
  }
}

// When the router never chooses the dropped expert, the pruned layer computes exactly what the
// unpruned one did: under top-K then softmax (the default) the K chosen logits and their softmax
// are unchanged, and every kept expert sees the same rows in the same order, so the arithmetic is
// the same and the logits are bitwise equal. (Under moe_router_pre_softmax without
// moe_router_norm_topk_prob the probs are a softmax over all E logits: dropping an expert removes
// its exp(logit) from the denominator and scales every kept prob by Z_E / Z_E', so the outputs
// change; with a capacity factor the capacity ceil(N K CF / E) changes with E.)
// The expert is kept from ever being chosen by construction: channel 0 of every token embedding is
// 5, so after the RMS norm it is about 5 / rms > 0, and expert 1's router row is -8 there and 0
// elsewhere (a logit near -8 x 2.7, while the others' stay within a few units of 0).
TEST(PruneMoe, ThePrunedLayerEqualsTheOriginalWhenTheDroppedExpertIsNeverChosen) {
  Communicator self = Communicator::self();
  ParallelGrid grid(self, ParallelConfig{});
  const ModelConfig c = tiny_moe("E");
  DecoderLM m(c, grid, 7);
  Param& emb = param(m, "model.embed_tokens.weight");
  for (int64_t v = 0; v < c.vocab_size; ++v) emb.value[v * c.d_model] = 5.0f;
  Param& gate = param(m, "model.layers.0.mlp.gate.weight");
  for (int64_t k = 0; k < c.d_model; ++k) gate.value[1 * c.d_model + k] = k == 0 ? -8.0f : 0.0f;
  m.mark_values_changed();
  const auto tokens = random_tokens(3 * c.seq_len, c.vocab_size);
  const ImportanceStats st = calibration_of(m, tokens, 3, c.seq_len);
  EXPECT_EQ(st.raw_means().at("model.layers.0.mlp.experts").count[1], 0);  // never chosen
  EXPECT_EQ(st.means("model.layers.0.mlp.experts")[1], 0.0);
  PruneTargets t;
  t.num_experts = 3;
  const PrunePlan plan = plan_pruning(c, st, t);
  ASSERT_EQ(plan.keep[0].experts, (std::vector<int64_t>{0, 2, 3}));
  DecoderLM pruned(plan.to, grid, 8);
  fill_pruned(pruned, plan, source_of(m));
  EXPECT_EQ(logits_of(pruned, tokens, 3, c.seq_len), logits_of(m, tokens, 3, c.seq_len));
}

TEST(PruneMoe, BadExpertTargetsGetOneClearErrorEach) {
  ModelConfig c = tiny_moe("*E");
  PruneTargets t;
  t.num_experts = 5;
  t.moe_ffn_hidden = 7;
  auto e = prune_target_problems(c, t);
  ASSERT_EQ(e.size(), 2u);
  EXPECT_NE(e[0].find("--target_num_experts 5: must be between 1 and the model's model.num_experts (4)"), std::string::npos);
  EXPECT_NE(e[1].find("--target_moe_ffn_hidden 7: must be between 1 and the model's model.moe_ffn_hidden (6)"),
            std::string::npos);
  t.moe_ffn_hidden = 0;
  t.num_experts = 1;  // fewer than moe_top_k = 2
  e = prune_target_problems(c, t);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("must be at least model.moe_top_k = 2"), std::string::npos);
  c.moe_router_groups = 2;
  c.moe_router_group_topk = 1;
  t.num_experts = 3;  // groups of 2 experts cannot keep 1.5 each
  e = prune_target_problems(c, t);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("must be a multiple of model.moe_router_groups = 2"), std::string::npos);
  c = tiny_moe("*-");
  c.num_experts = 0;
  c.ffn_hidden = 8;
  t.num_experts = 2;
  e = prune_target_problems(c, t);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("the model has no MoE layer"), std::string::npos);
}

// Group-limited routing: each contiguous expert group keeps as many experts, its best ones.
TEST(PruneMoe, ExpertGroupsKeepAsManyEach) {
  const std::vector<double> s = {0.9, 0.8, 0.1, 0.7, 0.2, 0.3};  // 2 groups of 3
  EXPECT_EQ(top_k_within_groups(s, 2, 4), (std::vector<int64_t>{0, 1, 3, 5}));
  EXPECT_EQ(top_k_indices(s, 4), (std::vector<int64_t>{0, 1, 3, 5}));
  EXPECT_EQ(top_k_within_groups(s, 2, 2), (std::vector<int64_t>{0, 3}));  // not the global top 2 {0, 1}
}

}  // namespace
}  // namespace ff
