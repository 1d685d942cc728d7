// Token-level objectives: the step's loss is the mean over all its valid targets (micro-batches
// with unequal valid counts weigh by their tokens, as in one large batch), and masked targets get
// exactly zero gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "models/decoder_lm.h"
#include "train/objective.h"
#include "train/pipeline.h"
#include "test_util.h"

namespace ff {
namespace {

ModelConfig dense_config() { return test::small_model("*-*-", 29); }

struct Batch {
  std::vector<int32_t> tokens, targets;
};

// B sequences; sequence b keeps its first keep[b] targets and masks the rest (-1).
Batch masked_batch(const ModelConfig& c, const std::vector<int64_t>& keep, uint64_t seed) {
  Rng rng(seed, "objective-batch");
  Batch b;
  const int64_t S = c.seq_len;
  for (size_t s = 0; s < keep.size(); ++s)
    for (int64_t i = 0; i < S; ++i) {
      b.tokens.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size))));
      const auto t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
      b.targets.push_back(i < keep[s] ? t : -1);
    }
  return b;
}

TEST(Objective, TokenMeanCrossEntropyValueAndGradient) {
  const float logp[5] = {-1.0f, -2.0f, 0.0f, -0.5f, -3.0f};
  const int32_t targets[5] = {3, 1, -1, 0, 7};
  HeadRows in{logp, targets, nullptr, 1, 5, nullptr};
  float dlogp[5];
  const ObjectiveValue v = TokenMeanCrossEntropy(10.0).evaluate(in, dlogp);
  EXPECT_DOUBLE_EQ(v.loss, (1.0 + 2.0 + 0.5 + 3.0) / 10.0);
  EXPECT_EQ(v.tokens, 4);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(dlogp[i], targets[i] >= 0 ? -0.1f : 0.0f) << i;
}

// Three micro-batches with 2 + 9 + 5 valid targets through the pipeline executor (one stage)
// equal one micro-batch of all six sequences: loss and every gradient.
TEST(Objective, UnequalMicroBatchesEqualOneLargeBatch) {
  const ModelConfig c = dense_config();
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  const std::vector<std::vector<int64_t>> keeps = {{2, 0}, {6, 3}, {1, 4}};
  std::vector<std::vector<int32_t>> tokens, targets;
  Batch all;
  for (size_t m = 0; m < keeps.size(); ++m) {
    Batch b = masked_batch(c, keeps[m], 40 + m);
    tokens.push_back(b.tokens);
    targets.push_back(b.targets);
    all.tokens.insert(all.tokens.end(), b.tokens.begin(), b.tokens.end());
    all.targets.insert(all.targets.end(), b.targets.begin(), b.targets.end());
  }
  DecoderLM split(c, grid, 3), whole(c, grid, 3);
  PipelineExecutor pipe(split, grid, static_cast<int64_t>(keeps.size()));
  split.params().zero_grads();
  const int64_t T = step_target_count(targets, grid.dp());
  EXPECT_EQ(T, 16);
  PipelineResult r = pipe.run(tokens, targets, 2, c.seq_len, TokenMeanCrossEntropy(static_cast<double>(T)));
  EXPECT_EQ(r.tokens, 16);

  auto mb = whole.new_micro_batch();
  whole.params().zero_grads();
  const double want = forward_mean_ce(whole, *mb, all.tokens.data(), all.targets.data(), 6, c.seq_len).loss;
  backward_mean_ce(whole, *mb, 1.0f);
  // The same sums in another order (per micro-batch, then added): a few fp32 ulps.
  EXPECT_NEAR(r.loss, want, 1e-6 * want);
  // Gradients: each element sums up to 96 tokens' terms through a 2-layer backward, grouped
  // otherwise (per micro-batch GEMMs, then added); the difference is bounded by about
  // (96 + depth) ulps of the sum of |terms|, which here is at most a few times the tensor's largest
  // gradient: 1e-5 of that scale (~170 fp32 ulps), plus 1e-4 relative.
  for (size_t i = 0; i < whole.params().params().size(); ++i) {
    const Param &a = split.params().params()[i], &b = whole.params().params()[i];
    double scale = 0;
    for (int64_t j = 0; j < b.numel(); ++j) scale = std::max(scale, static_cast<double>(std::fabs(b.grad[j])));
    EXPECT_TRUE(test::all_close(a.grad, b.grad, static_cast<size_t>(a.numel()), 1e-5 * scale, 1e-4)) << a.name;
  }
  // The mean of the micro-batches' means weighs the 2-token batch like the 9-token one: not this.
  double mean_of_means = 0;
  for (size_t m = 0; m < keeps.size(); ++m)
    mean_of_means += forward_mean_ce(whole, *mb, tokens[m].data(), targets[m].data(), 2, c.seq_len).loss / 3.0;
  EXPECT_GT(std::fabs(mean_of_means - want), 1e-3);
}

// The last two positions of every sequence have masked targets and input tokens found nowhere
// else: by causality nothing that reaches a valid target depends on them, so their embedding rows
// get exactly zero gradient, and other tokens in those positions change no gradient bit.
TEST(Objective, MaskedTargetsGetExactlyZeroGradient) {
  const ModelConfig c = dense_config();
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(c, grid, 5);
  const int64_t B = 2, S = c.seq_len, V = c.vocab_size, D = c.d_model;
  Batch b = masked_batch(c, {S - 2, S - 2}, 8);
  for (int64_t s = 0; s < B; ++s)
    for (int64_t i = 0; i < S; ++i) {
      int32_t& t = b.tokens[static_cast<size_t>(s * S + i)];
      if (i >= S - 2) t = static_cast<int32_t>(V - 1 - (s * 2 + (i - (S - 2))));  // ids 25..28, unique
      else t = t % (V - 4);
    }
  auto mb = model.new_micro_batch();
  model.params().zero_grads();
  forward_mean_ce(model, *mb, b.tokens.data(), b.targets.data(), B, S);
  backward_mean_ce(model, *mb, 1.0f);
  const Param* emb = model.params().find("model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  for (int64_t v = V - 4; v < V; ++v)
    for (int64_t d = 0; d < D; ++d) EXPECT_EQ(emb->grad[v * D + d], 0.0f) << "row " << v;
  std::vector<float> g(model.params().grads(), model.params().grads() + model.params().numel());
  Batch other = b;
  for (int64_t s = 0; s < B; ++s)  // the four ids reversed among the masked positions
    for (int64_t i = S - 2; i < S; ++i) {
      int32_t& t = other.tokens[static_cast<size_t>(s * S + i)];
      t = static_cast<int32_t>(2 * (V - 4) + 3 - t);
    }
  model.params().zero_grads();
  forward_mean_ce(model, *mb, other.tokens.data(), other.targets.data(), B, S);
  backward_mean_ce(model, *mb, 1.0f);
  EXPECT_EQ(0, std::memcmp(g.data(), model.params().grads(), sizeof(float) * g.size()));
}

}  // namespace
}  // namespace ff
