// The value head (model.head = value): value_outputs scalars per token from score.weight [K, D]
// (K = 1: reward models, critics; K = 3: a SteerLM attribute model); gradients of an objective of
// those values pass finite differences, through the whole model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "models/config.h"
#include "models/decoder_lm.h"
#include "test_util.h"

namespace ff {
namespace {

ModelConfig value_model(int64_t K) {
  ModelConfig c = test::small_model("*-*E", 29);
  c.head = HeadKind::value;
  c.value_outputs = K;
  return c;
}

// A regression objective on the values: L = 1/2 sum over rows with a target and outputs k of
// (v[k] - (t + k) / 10)^2.
double objective(const HeadRows& r, std::vector<float>* dv) {
  double l = 0;
  const int64_t K = r.width;
  if (dv) dv->assign(static_cast<size_t>(r.B * r.S * K), 0.0f);
  for (int64_t n = 0; n < r.B * r.S; ++n) {
    if (r.targets[n] < 0) continue;
    for (int64_t k = 0; k < K; ++k) {
      const double e = r.value[n * K + k] - (r.targets[n] + k) / 10.0;
      l += 0.5 * e * e;
      if (dv) (*dv)[static_cast<size_t>(n * K + k)] = static_cast<float>(e);
    }
  }
  return l;
}

class ValueHeadOutputs : public ::testing::TestWithParam<int64_t> {};

TEST_P(ValueHeadOutputs, CountsAndGradientsMatchFiniteDifferences) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  const ModelConfig c = value_model(GetParam());
  DecoderLM m(c, grid, 3);
  ASSERT_NE(m.params().find("score.weight"), nullptr);
  EXPECT_EQ(m.params().find("score.weight")->global_shape[0], GetParam());
  EXPECT_EQ(m.params().find("lm_head.weight"), nullptr);
  EXPECT_EQ(m.params().numel(), count_parameters(c));
  Rng rng(2, "value-batch");
  std::vector<int32_t> tokens, targets;
  for (int64_t i = 0; i < 2 * c.seq_len; ++i) {
    tokens.push_back(static_cast<int32_t>(rng.below(29)));
    targets.push_back(i % 4 == 3 ? -1 : static_cast<int32_t>(rng.below(29)));
  }
  auto mb = m.new_micro_batch();
  auto loss = [&](std::vector<float>* dv) {
    m.forward(*mb, tokens.data(), targets.data(), 2, c.seq_len);
    return objective(m.head_rows(*mb), dv);
  };
  m.params().zero_grads();
  std::vector<float> dv;
  loss(&dv);
  m.backward(*mb, dv.data(), 1.0f, 1.0f);
  int checked = 0;
  for (Param& p : m.params().params()) {
    const auto u = test::randn(static_cast<size_t>(p.numel()), 70 + checked);
    std::vector<float> saved(p.value, p.value + p.numel());
    const double analytic = test::dot(p.grad, u.data(), u.size());
    const float h = 1e-3f;
    auto at = [&](float sign) {
      for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = saved[static_cast<size_t>(i)] + sign * h * u[static_cast<size_t>(i)];
      return loss(nullptr);
    };
    const double numeric = (at(1) - at(-1)) / (2.0 * h);
    std::memcpy(p.value, saved.data(), sizeof(float) * saved.size());
    EXPECT_NEAR(analytic, numeric, 2e-3 + 3e-2 * std::fabs(numeric)) << p.name;  // as the model's own check
    ++checked;
  }
  EXPECT_GT(checked, 10);
  ModelConfig tied = c;
  tied.tie_embeddings = true;
  EXPECT_FALSE(tied.validate().empty());
  EXPECT_THROW(m.new_decoder(1, 4), Error);
}

INSTANTIATE_TEST_SUITE_P(ValueHead, ValueHeadOutputs, ::testing::Values(1, 3));

}  // namespace
}  // namespace ff
