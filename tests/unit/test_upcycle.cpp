// Upcycling (train/upcycle.h; tests of specs/methods.md §4.7): at step 0 the MoE computes the
// dense model's function exactly where the arithmetic allows it, closely otherwise; router rows
// tie within each virtual group and expert e holds shard e mod G; bad options are named.
#include <gtest/gtest.h>

#include <cmath>

#include "models/decoder_lm.h"
#include "train/model_source.h"
#include "train/trainer.h"
#include "train/upcycle.h"
#include "test_util.h"

namespace ff {
namespace {

ModelConfig dense_config(Activation act) {
  ModelConfig c = test::small_model("*-*-", 29);
  c.activation = act;
  c.ffn_hidden = 24;
  c.init_std = 0.2;
  return c;
}

struct Models {
  ModelConfig moe;
  std::vector<float> dense_logits, moe_logits;
};

// The dense model's and its upcycle's logits on one batch (the upcycle loaded through the
// transform, as train --init_from --upcycle_experts does).
Models logits_of(const ModelConfig& dense_cfg, const UpcycleOptions& o) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  const std::string dir = test::fresh_dir("upcycle");
  DecoderLM dense(dense_cfg, grid, 4);
  RunConfig rc;
  rc.model = dense_cfg;
  save_model(dense, rc, dir + "/dense.safetensors");
  Models m;
  m.moe = upcycled_config(dense_cfg, o);
  m.moe.moe_aux_loss_coeff = 0;
  DecoderLM moe(m.moe, grid, 99);
  const ModelSource src = open_model_source(dir + "/dense.safetensors");
  load_model_source(src, moe, {}, [&](const TensorFetch& f, const std::string& n, HostTensor& t) {
    return upcycled_tensor(src.config.model, o, f, n, t);
  });
  Rng rng(6, "upcycle-batch");
  std::vector<int32_t> tokens;
  for (int64_t i = 0; i < 2 * dense_cfg.seq_len; ++i) tokens.push_back(static_cast<int32_t>(rng.below(29)));
  for (DecoderLM* model : {&dense, &moe}) {
    auto mb = model->new_micro_batch();
    model->forward(*mb, tokens.data(), nullptr, 2, dense_cfg.seq_len);
    const float* l = model->logits(*mb);
    (model == &dense ? m.dense_logits : m.moe_logits).assign(l, l + 2 * dense_cfg.seq_len * 29);
  }
  return m;
}

UpcycleOptions options(int64_t E, int64_t K, int64_t G, bool softmax_first, double router_std = 0.02) {
  UpcycleOptions o;
  o.experts = E;
  o.top_k = K;
  o.granularity = G;
  o.softmax_then_topk = softmax_first;
  o.router_std = router_std;
  return o;
}

// Exact cases: the same function, so the logits differ only by fp32 rounding in a different
// order of sums (the experts' partial MLPs summed in the combine, scales of 2^k or cube roots
// applied before the GEMMs): a relative 2e-5 of the logits' scale covers a few ulp per layer.
void expect_same_function(const Models& m, double tol) {
  ASSERT_EQ(m.dense_logits.size(), m.moe_logits.size());
  double scale = 0;
  for (float v : m.dense_logits) scale = std::max(scale, std::fabs(double(v)));
  EXPECT_TRUE(test::all_close(m.moe_logits, m.dense_logits, tol * scale, 0));
}

TEST(Upcycle, TopKThenSoftmaxWithWholeGroupsIsTheDenseModel) {
  // Squared ReLU: the scaling sigma^(1/3) on up and down is exact (degree 3).
  expect_same_function(logits_of(dense_config(Activation::squared_relu), options(8, 4, 4, false)), 2e-5);
  expect_same_function(logits_of(dense_config(Activation::squared_relu), options(8, 2, 2, false)), 2e-5);
  // SwiGLU at granularity 1: no scaling needed (sigma = G = 1), so exact too.
  expect_same_function(logits_of(dense_config(Activation::swiglu), options(8, 2, 1, false)), 2e-5);
  // SwiGLU at granularity 4: exact with the whole scale on the (linear) down projection.
  UpcycleOptions down = options(8, 4, 4, false);
  down.scale_down_only = true;
  expect_same_function(logits_of(dense_config(Activation::swiglu), down), 2e-5);
  down.softmax_then_topk = true;
  down.router_std = 0;
  expect_same_function(logits_of(dense_config(Activation::swiglu), down), 2e-5);
}

TEST(Upcycle, SoftmaxThenTopKWithAZeroRouterIsTheDenseModel) {
  // Probabilities exactly 1/E; top-K breaks ties by the lowest index, so K = mG picks whole groups.
  expect_same_function(logits_of(dense_config(Activation::squared_relu), options(8, 4, 4, true, 0.0)), 2e-5);
  expect_same_function(logits_of(dense_config(Activation::squared_relu), options(4, 2, 1, true, 0.0)), 2e-5);
}

TEST(Upcycle, ARandomRouterOrSwiGluScalingIsClose) {
  // Not exact: a random router (std 0.02) moves each probability off 1/E by a few percent, and
  // SwiGLU's scaling is exact only for its linear factors. At an init like a trained model's
  // (std 0.02) the MLP's share of the logits is small and SiLU near-linear, so the logits move by
  // far less than those few percent: the relative RMS difference is bounded here by 1% (measured
  // 0.04-0.2% at these sizes; an error in the shards or scales moves it to order 1).
  auto realistic = [](Activation a) {
    ModelConfig c = dense_config(a);
    c.init_std = 0.02;
    return c;
  };
  for (const auto& m : {logits_of(realistic(Activation::squared_relu), options(8, 4, 4, true)),
                        logits_of(realistic(Activation::swiglu), options(8, 4, 4, true)),
                        logits_of(realistic(Activation::swiglu), options(16, 4, 4, false))}) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < m.dense_logits.size(); ++i) {
      diff += std::pow(double(m.moe_logits[i]) - m.dense_logits[i], 2);
      norm += std::pow(double(m.dense_logits[i]), 2);
    }
    EXPECT_LT(std::sqrt(diff / norm), 0.01);
  }
}

TEST(Upcycle, RouterRowsTieWithinGroupsAndExpertsHoldTheirShards) {
  const ModelConfig d = dense_config(Activation::swiglu);
  const UpcycleOptions o = options(8, 4, 4, true);
  const int64_t D = d.d_model, F = d.ffn_hidden, G = 4, Fe = F / G;
  std::map<std::string, HostTensor> dense;
  Rng rng(1, "dense-tensors");
  for (const char* p : {"gate_proj", "up_proj", "down_proj"}) {
    HostTensor t;
    t.shape = std::string(p) == "down_proj" ? std::vector<int64_t>{D, F} : std::vector<int64_t>{F, D};
    for (int64_t i = 0; i < D * F; ++i) t.data.push_back(rng.normal());
    dense[std::string("model.layers.1.mlp.") + p + ".weight"] = t;
  }
  const TensorFetch fetch = [&](const std::string& n, HostTensor& out) {
    if (!dense.count(n)) return false;
    out = dense[n];
    return true;
  };
  HostTensor router;
  ASSERT_TRUE(upcycled_tensor(d, o, fetch, "model.layers.1.mlp.gate.weight", router));
  ASSERT_EQ(router.shape, (std::vector<int64_t>{8, D}));
  for (int64_t e = 0; e < 8; ++e)
    for (int64_t k = 0; k < D; ++k) {
      EXPECT_EQ(router.data[static_cast<size_t>(e * D + k)], router.data[static_cast<size_t>((e / G * G) * D + k)]);
      if (e % G == 0 && e > 0) {
        EXPECT_NE(router.data[static_cast<size_t>(e * D)], router.data[0]);
      }
    }
  const float s = static_cast<float>(upcycle_scale(d, o));
  EXPECT_NEAR(s, std::cbrt(4.0 * 8 / 4), 1e-6);  // sigma = G E / K, SwiGLU: cube root
  for (int64_t e = 0; e < 8; ++e) {
    HostTensor up, down;
    ASSERT_TRUE(upcycled_tensor(d, o, fetch, "model.layers.1.mlp.experts." + std::to_string(e) + ".up_proj.weight", up));
    ASSERT_TRUE(upcycled_tensor(d, o, fetch, "model.layers.1.mlp.experts." + std::to_string(e) + ".down_proj.weight", down));
    const int64_t shard = e % G;
    const auto& du = dense["model.layers.1.mlp.up_proj.weight"].data;
    const auto& dd = dense["model.layers.1.mlp.down_proj.weight"].data;
    for (int64_t r = 0; r < Fe; ++r)
      for (int64_t c = 0; c < D; ++c)
        EXPECT_EQ(up.data[static_cast<size_t>(r * D + c)], s * du[static_cast<size_t>((shard * Fe + r) * D + c)]);
    for (int64_t r = 0; r < D; ++r)
      for (int64_t c = 0; c < Fe; ++c)
        EXPECT_EQ(down.data[static_cast<size_t>(r * Fe + c)], s * dd[static_cast<size_t>(r * F + shard * Fe + c)]);
  }
  // The rest of the model is the dense tensors themselves.
  dense["model.layers.0.self_attn.q_proj.weight"] = {{2, 2}, {1, 2, 3, 4}};
  HostTensor same;
  ASSERT_TRUE(upcycled_tensor(d, o, fetch, "model.layers.0.self_attn.q_proj.weight", same));
  EXPECT_EQ(same.data, (std::vector<float>{1, 2, 3, 4}));
}

TEST(Upcycle, BadOptionsAreNamed) {
  auto error_of = [](const ModelConfig& c, const UpcycleOptions& o) {
    try {
      upcycled_config(c, o);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const ModelConfig d = dense_config(Activation::swiglu);
  EXPECT_NE(error_of(d, options(6, 2, 4, true)).find("upcycle_experts = 6 is not divisible by"), std::string::npos);
  EXPECT_NE(error_of(d, options(10, 2, 5, true)).find("ffn_hidden = 24 is not divisible by"), std::string::npos);
  EXPECT_NE(error_of(test::small_model("*E", 29), options(8, 2, 1, true)).find("already an MoE"), std::string::npos);
  EXPECT_NE(error_of(d, options(8, 9, 1, true)).find("upcycle_top_k = 9"), std::string::npos);
  UpcycleOptions every = options(8, 2, 1, true);
  every.layers = "every_other";
  EXPECT_EQ(upcycled_config(d, every).layer_pattern, "*-*E");
  every.layers = "0";
  EXPECT_EQ(upcycled_config(d, every).layer_pattern, "*E*-");
  every.layers = "5";
  EXPECT_NE(error_of(d, every).find("upcycle_layers"), std::string::npos);
}

}  // namespace
}  // namespace ff
