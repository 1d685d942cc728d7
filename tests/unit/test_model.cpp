// Whole-model tests: gradients against finite differences for tiny dense and MoE configs,
// gradient accumulation, determinism, and the MoE invariants of the layer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "layers/mlp.h"
#include "layers/moe/moe_layer.h"
#include "models/decoder_lm.h"
#include "train/objective.h"
#include "test_util.h"

namespace ff {
namespace {

ModelConfig tiny_config(bool moe) {
  ModelConfig c;
  c.vocab_size = 23;
  c.d_model = 16;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 6;  // head_dim != d_model / heads on purpose
  c.seq_len = 7;
  c.ffn_hidden = 20;
  c.num_experts = moe ? 4 : 0;
  c.moe_top_k = 2;
  c.moe_ffn_hidden = 12;
  c.moe_aux_loss_coeff = moe ? 0.1 : 0.0;
  c.moe_z_loss_coeff = moe ? 0.01 : 0.0;
  c.init_std = 0.3;  // large enough that every path carries gradient worth checking
  return c;
}

struct Batch {
  std::vector<int32_t> tokens, targets;
};

Batch random_batch(int64_t B, int64_t S, int64_t V, uint64_t seed) {
  Rng rng(seed, "batch");
  Batch b;
  for (int64_t i = 0; i < B * S; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(V))));
    b.targets.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(V))));
  }
  b.targets[1] = -1;  // an ignored target
  return b;
}

// Loss including the MoE auxiliary losses (whose gradients the router injects).
double total_loss(DecoderLM& m, DecoderLM::MicroBatch& mb, const Batch& b, int64_t B, int64_t S) {
  ForwardResult r = forward_mean_ce(m, mb, b.tokens.data(), b.targets.data(), B, S);
  return r.loss + r.aux_loss + r.z_loss;
}

// The experts chosen for every token of every MoE layer in the last forward.
std::vector<int32_t> routing(DecoderLM& m, DecoderLM::MicroBatch& mb, const Batch& b, int64_t B, int64_t S) {
  total_loss(m, mb, b, B, S);
  return m.routed_experts(mb);
}

void check_model_gradients(const ModelConfig& cfg) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(cfg, grid, 7);
  const int64_t B = 2, S = cfg.seq_len;
  Batch batch = random_batch(B, S, cfg.vocab_size, 3);
  auto mb = model.new_micro_batch();
  model.params().zero_grads();
  total_loss(model, *mb, batch, B, S);
  backward_mean_ce(model, *mb, 1.0f);
  // Directional derivative per parameter tensor: (L(p + h u) - L(p - h u)) / 2h vs <g, u>.
  int checked = 0;
  for (Param& p : model.params().params()) {
    std::vector<float> u = test::randn(static_cast<size_t>(p.numel()), 11 + checked);
    std::vector<float> saved(p.value, p.value + p.numel());
    const double analytic = test::dot(p.grad, u.data(), u.size());
    // Top-k routing is piecewise: if a perturbation flips a selection the difference quotient
    // is meaningless, so shrink the step until the routing of both evaluations is unchanged.
    const std::vector<int32_t> base_routing = routing(model, *mb, batch, B, S);
    float h = 2e-3f;
    double numeric = 0;
    for (int attempt = 0; attempt < 6; ++attempt, h *= 0.5f) {
      auto shifted = [&](float sign, std::vector<int32_t>& r) {
        for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = saved[static_cast<size_t>(i)] + sign * h * u[static_cast<size_t>(i)];
        double l = total_loss(model, *mb, batch, B, S);
        r = model.routed_experts(*mb);
        return l;
      };
      std::vector<int32_t> r_up, r_down;
      numeric = (shifted(1, r_up) - shifted(-1, r_down)) / (2.0 * h);
      if (r_up == base_routing && r_down == base_routing) break;
    }
    std::memcpy(p.value, saved.data(), sizeof(float) * saved.size());
    EXPECT_NEAR(analytic, numeric, 2e-3 + 3e-2 * std::fabs(numeric)) << p.name;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(model.params().params().size()));
}

TEST(Model, DenseGradientsMatchFiniteDifferences) { check_model_gradients(tiny_config(false)); }

TEST(Model, MoeGradientsMatchFiniteDifferences) { check_model_gradients(tiny_config(true)); }

// A Nemotron-H-style hybrid (Mamba2, attention without RoPE, squared-ReLU MLP, MoE): every
// parameter of the mixer (in_proj's segments, the conv, dt_bias, A_log, D, the gated norm,
// out_proj) against finite differences; the chunk (3) does not divide the sequence (7).
ModelConfig tiny_hybrid(bool moe) {
  ModelConfig c = tiny_config(moe);
  c.layer_pattern = moe ? "M*ME" : "M*M-";
  c.position_embedding = PositionEmbedding::none;
  c.activation = Activation::squared_relu;
  c.mamba_num_heads = 4;
  c.mamba_head_dim = 3;
  c.mamba_groups = 2;
  c.mamba_state = 5;
  c.mamba_chunk = 3;
  c.mamba_dt_min = 0.05;  // Δ large enough that the decay (and A_log's gradient) matter
  c.mamba_dt_max = 0.5;
  return c;
}

TEST(Model, HybridMambaGradientsMatchFiniteDifferences) { check_model_gradients(tiny_hybrid(false)); }
TEST(Model, HybridMambaMoeGradientsMatchFiniteDifferences) { check_model_gradients(tiny_hybrid(true)); }

// Packed examples (positions restarting at 0) restart the conv and the scan: each example's
// logits equal those of the example alone.
TEST(Model, HybridMambaPackedExamplesAreIndependent) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelConfig c = tiny_hybrid(false);
  DecoderLM model(c, grid, 3);
  const int64_t S = c.seq_len;  // 7 = an example of 4 and one of 3
  Batch b = random_batch(1, S, c.vocab_size, 9);
  std::vector<int32_t> positions = {0, 1, 2, 3, 0, 1, 2};
  auto mb = model.new_micro_batch();
  model.forward(*mb, b.tokens.data(), nullptr, 1, S, positions.data());
  std::vector<float> packed(model.logits(*mb), model.logits(*mb) + S * c.vocab_size);
  for (const auto& [start, len] : {std::pair<int64_t, int64_t>{0, 4}, {4, 3}}) {
    model.forward(*mb, b.tokens.data() + start, nullptr, 1, len);
    const float* alone = model.logits(*mb);
    for (int64_t i = 0; i < len * c.vocab_size; ++i)
      EXPECT_FLOAT_EQ(packed[static_cast<size_t>(start * c.vocab_size + i)], alone[i]) << "example at " << start;
  }
}

TEST(Model, MoeWithSharedExpertGateSigmoidAndBiasGradients) {
  ModelConfig c = tiny_config(true);
  c.moe_shared_expert_hidden = 10;
  c.moe_shared_expert_gate = true;
  c.moe_router_score = cpu::RouterScore::sigmoid;
  c.moe_router_norm_topk_prob = true;
  c.moe_expert_bias = true;
  check_model_gradients(c);
}

TEST(Model, Nemotron4StyleGradients) {
  ModelConfig c = tiny_config(false);
  c.norm = NormKind::layernorm1p;
  c.activation = Activation::squared_relu;
  c.head_dim = 8;
  c.rotary_percent = 0.5;
  c.tie_embeddings = true;
  check_model_gradients(c);
}

// The LM head and cross-entropy over row chunks (5, 5, 4 of 14 rows; backward recomputes each
// chunk's logits) give the loss and gradients of the whole-batch head, and pass the gradient check.
TEST(Model, ChunkedHeadEqualsTheWholeHead) {
  ModelConfig c = tiny_config(true), chunked = c;
  chunked.head_chunk_rows = 5;
  check_model_gradients(chunked);
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM whole(c, grid, 7), parts(chunked, grid, 7);
  const int64_t B = 2, S = c.seq_len;
  Batch batch = random_batch(B, S, c.vocab_size, 3);
  auto mw = whole.new_micro_batch(), mp = parts.new_micro_batch();
  whole.params().zero_grads();
  parts.params().zero_grads();
  const double lw = total_loss(whole, *mw, batch, B, S), lp = total_loss(parts, *mp, batch, B, S);
  EXPECT_NEAR(lp, lw, 1e-6 * std::fabs(lw));
  backward_mean_ce(whole, *mw, 1.0f);
  backward_mean_ce(parts, *mp, 1.0f);
  for (size_t i = 0; i < whole.params().params().size(); ++i) {
    const Param &a = parts.params().params()[i], &b = whole.params().params()[i];
    EXPECT_TRUE(test::all_close(a.grad, b.grad, static_cast<size_t>(a.numel()), 1e-6, 1e-5)) << a.name;
  }
  EXPECT_THROW(parts.logits(*mp), Error);  // one chunk of logits was kept
}

TEST(Model, GradientAccumulationEqualsOneLargeBatch) {
  ModelConfig c = tiny_config(true);
  c.moe_aux_loss_coeff = 0;  // the aux loss is defined per micro-batch, so it differs by design
  c.moe_z_loss_coeff = 0;
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(c, grid, 5);
  const int64_t S = c.seq_len;
  Batch full = random_batch(4, S, c.vocab_size, 9);
  for (auto& t : full.targets) t = t < 0 ? 0 : t;  // equal valid counts per half
  auto mb = model.new_micro_batch();
  model.params().zero_grads();
  forward_mean_ce(model, *mb, full.tokens.data(), full.targets.data(), 4, S);
  backward_mean_ce(model, *mb, 1.0f);
  std::vector<float> g_full(model.params().grads(), model.params().grads() + model.params().numel());
  model.params().zero_grads();
  for (int half = 0; half < 2; ++half) {
    forward_mean_ce(model, *mb, full.tokens.data() + half * 2 * S, full.targets.data() + half * 2 * S, 2, S);
    backward_mean_ce(model, *mb, 0.5f);
  }
  std::vector<float> g_acc(model.params().grads(), model.params().grads() + model.params().numel());
  EXPECT_TRUE(test::all_close(g_acc, g_full, 1e-6, 1e-4));
}

TEST(Model, SameSeedGivesBitIdenticalLossAndGradients) {
  ModelConfig c = tiny_config(true);
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  Batch b = random_batch(2, c.seq_len, c.vocab_size, 4);
  std::vector<float> grads[2];
  double loss[2];
  for (int run = 0; run < 2; ++run) {
    DecoderLM model(c, grid, 123);
    auto mb = model.new_micro_batch();
    loss[run] = forward_mean_ce(model, *mb, b.tokens.data(), b.targets.data(), 2, c.seq_len).loss;
    backward_mean_ce(model, *mb, 1.0f);
    grads[run].assign(model.params().grads(), model.params().grads() + model.params().numel());
  }
  EXPECT_EQ(loss[0], loss[1]);
  EXPECT_EQ(0, std::memcmp(grads[0].data(), grads[1].data(), sizeof(float) * grads[0].size()));
}

TEST(Model, CausalOutputIgnoresFutureTokens) {
  ModelConfig c = tiny_config(true);
  c.moe_capacity_factor = 0;  // dropless: routing of one token never depends on another
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(c, grid, 1);
  auto mb = model.new_micro_batch();
  Batch b = random_batch(1, c.seq_len, c.vocab_size, 2);
  model.forward(*mb, b.tokens.data(), nullptr, 1, c.seq_len);
  std::vector<float> before(model.logits(*mb), model.logits(*mb) + c.seq_len * c.vocab_size);
  b.tokens.back() = (b.tokens.back() + 1) % static_cast<int32_t>(c.vocab_size);
  model.forward(*mb, b.tokens.data(), nullptr, 1, c.seq_len);
  // Rows before the last position are unchanged. Not bit for bit: the changed token may go to
  // other experts, and an expert GEMM with one row more or less may block its sums otherwise; a
  // logit is a sum over d_model of products through a few layers, so a few fp32 ulps of the
  // logits' scale (1e-5 of the largest, ~170 ulps) bound that, where any leak of the future token
  // would move a logit by its own size.
  const float* after = model.logits(*mb);
  double scale = 0;
  for (float v : before) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  EXPECT_TRUE(test::all_close(after, before.data(), static_cast<size_t>((c.seq_len - 1) * c.vocab_size), 1e-5 * scale, 0));
  // The last row sees the new token.
  EXPECT_FALSE(test::all_close(after + (c.seq_len - 1) * c.vocab_size, before.data() + (c.seq_len - 1) * c.vocab_size,
                               static_cast<size_t>(c.vocab_size), 1e-3 * scale, 0));
}

// Experts that are copies of one dense MLP, with gating probs summing to 1, reproduce that MLP.
void check_copied_experts(bool pre_softmax) {
  ModelConfig c = tiny_config(true);
  c.moe_router_pre_softmax = pre_softmax;
  c.moe_router_norm_topk_prob = pre_softmax;  // softmax-then-top-k with renormalisation
  c.moe_ffn_hidden = 9;
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ParamStore store;
  Compute compute;
  MoeLayer moe(store, compute, "moe", c, grid, 0.3f, 0.3f);
  Mlp dense(store, compute, "dense", c.d_model, c.moe_ffn_hidden, c.activation, 0.3f, 0.3f);
  store.allocate(42);
  const int64_t F = c.moe_ffn_hidden, D = c.d_model, W = 2 * F;
  for (int64_t e = 0; e < c.num_experts; ++e) {
    std::string p = "moe.experts." + std::to_string(e);
    std::memcpy(store.find(p + ".gate_proj.weight")->value, store.find("dense.gate_proj.weight")->value, sizeof(float) * F * D);
    std::memcpy(store.find(p + ".up_proj.weight")->value, store.find("dense.up_proj.weight")->value, sizeof(float) * F * D);
    std::memcpy(store.find(p + ".down_proj.weight")->value, store.find("dense.down_proj.weight")->value, sizeof(float) * D * F);
  }
  (void)W;
  const int64_t N = 13;
  std::vector<float> x = test::randn(static_cast<size_t>(N * D), 5);
  std::vector<float> y_moe(static_cast<size_t>(N * D)), y_dense(y_moe.size());
  Arena arena;
  MoeLayer::Saved s;
  moe.forward(s, y_moe.data(), x.data(), N, 1, arena);
  Mlp::Saved ds;
  dense.forward(ds, y_dense.data(), x.data(), N, arena);
  EXPECT_TRUE(test::all_close(y_moe, y_dense, 1e-5, 1e-4));
  // Dropless: every token went to exactly K experts.
  int64_t rows = 0;
  for (int64_t n : s.stats.tokens_per_expert) rows += n;
  EXPECT_EQ(rows, N * c.moe_top_k);
  EXPECT_EQ(s.stats.dropped_slots, 0);
}

TEST(MoeLayer, CopiedExpertsReproduceDenseMlpTopkThenSoftmax) { check_copied_experts(false); }
TEST(MoeLayer, CopiedExpertsReproduceDenseMlpSoftmaxThenTopkRenormalised) { check_copied_experts(true); }

TEST(MoeLayer, CapacityDropsAndPaddingKeepsShapesStatic) {
  ModelConfig c = tiny_config(true);
  c.moe_capacity_factor = 0.5;
  c.moe_pad_to_capacity = true;
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ParamStore store;
  Compute compute;
  MoeLayer moe(store, compute, "moe", c, grid, 0.3f, 0.3f);
  store.allocate(3);
  const int64_t N = 16, D = c.d_model;
  const int64_t C = cpu::expert_capacity(N, c.moe_top_k, c.num_experts, c.moe_capacity_factor);  // ceil(16*2/4*0.5) = 4
  EXPECT_EQ(C, 4);
  std::vector<float> x = test::randn(static_cast<size_t>(N * D), 8), y(x.size());
  Arena arena;
  MoeLayer::Saved s;
  moe.forward(s, y.data(), x.data(), N, 1, arena);
  EXPECT_EQ(s.dispatch.rows.shape[0], C * c.num_experts);  // every expert exactly C rows
  for (int64_t n : s.stats.tokens_per_expert) EXPECT_LE(n, C);
  EXPECT_EQ(s.stats.dropped_slots, N * c.moe_top_k - [&] { int64_t k = 0; for (auto n : s.stats.tokens_per_expert) k += n; return k; }());
  EXPECT_GT(s.stats.dropped_slots, 0);  // 32 routed slots cannot fit 16 kept slots
}

}  // namespace
}  // namespace ff
