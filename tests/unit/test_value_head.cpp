// The value head (model.head = value): one scalar per token from score.weight [1, D]; gradients
// of an objective of those values pass finite differences, through the whole model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "models/config.h"
#include "models/decoder_lm.h"
#include "test_util.h"

namespace ff {
namespace {

ModelConfig value_model() {
  ModelConfig c = test::small_model("*-*E", 29);
  c.head = HeadKind::value;
  return c;
}

// A regression objective on the values: L = 1/2 sum over rows with a target of (v - t / 10)^2.
double objective(const HeadRows& r, std::vector<float>* dv) {
  double l = 0;
  if (dv) dv->assign(static_cast<size_t>(r.B * r.S), 0.0f);
  for (int64_t n = 0; n < r.B * r.S; ++n) {
    if (r.targets[n] < 0) continue;
    const double e = r.value[n] - r.targets[n] / 10.0;
    l += 0.5 * e * e;
    if (dv) (*dv)[static_cast<size_t>(n)] = static_cast<float>(e);
  }
  return l;
}

TEST(ValueHead, CountsAndGradientsMatchFiniteDifferences) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  const ModelConfig c = value_model();
  DecoderLM m(c, grid, 3);
  ASSERT_NE(m.params().find("score.weight"), nullptr);
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

}  // namespace
}  // namespace ff
