// The inference path: greedy decoding with the KV cache gives the tokens of greedy decoding by
// full recomputation, for dense and MoE models, over batched prompts of unequal lengths and past
// the cache's capacity (where the context restarts); sampling honours top-k and top-p; stop
// strings and EOS end a sequence.
#include <gtest/gtest.h>

#include "io/tokenizer.h"
#include "models/decoder_lm.h"
#include "train/generation.h"

namespace ff {
namespace {

ModelConfig model_config(bool moe) {
  ModelConfig c;
  c.vocab_size = 264;  // the byte tokenizer's 257 and padding rows
  c.d_model = 32;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 16;
  c.ffn_hidden = 40;
  c.num_experts = moe ? 4 : 0;
  c.moe_top_k = 2;
  c.moe_ffn_hidden = 24;
  c.init_std = 0.3;  // logits far apart: greedy choices are not near-ties
  return c;
}

std::vector<std::vector<int32_t>> prompts(const Tokenizer& tok) {
  return {tok.encode("And God said"), tok.encode("In"), tok.encode("the beginning of the story")};
}

// A Nemotron-H-style hybrid: Mamba2 layers (their conv and SSM states on the inference path),
// attention without RoPE, squared-ReLU MLPs; the scan's chunk (3) divides no prompt length.
ModelConfig hybrid_config() {
  ModelConfig c = model_config(false);
  c.layer_pattern = "M-M*-";
  c.position_embedding = PositionEmbedding::none;
  c.activation = Activation::squared_relu;
  c.mamba_num_heads = 4;
  c.mamba_head_dim = 8;
  c.mamba_groups = 2;
  c.mamba_state = 6;
  c.mamba_chunk = 3;
  return c;
}

void expect_cache_equals_recompute(const ModelConfig& cfg) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(cfg, grid, 21);
  ByteTokenizer tok;
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 40;  // the 16-position cache fills and restarts several times
  GenerationStats cached_stats, full_stats;
  const auto cached = generate(model, grid, tok, prompts(tok), o, &cached_stats);
  o.kv_cache = false;
  const auto full = generate(model, grid, tok, prompts(tok), o, &full_stats);
  ASSERT_EQ(cached.size(), 3u);
  for (size_t i = 0; i < cached.size(); ++i) {
    EXPECT_EQ(cached[i].tokens, full[i].tokens) << "prompt " << i;
    EXPECT_EQ(cached[i].finish, full[i].finish) << "prompt " << i;
  }
  EXPECT_EQ(cached_stats.steps, full_stats.steps);
  EXPECT_GT(cached_stats.new_tokens, 0);
}

TEST(Generation, CacheEqualsRecomputeDense) { expect_cache_equals_recompute(model_config(false)); }
TEST(Generation, CacheEqualsRecomputeMoe) { expect_cache_equals_recompute(model_config(true)); }
TEST(Generation, CacheEqualsRecomputeHybridMamba) { expect_cache_equals_recompute(hybrid_config()); }

// Logits of a cached decode step equal those of a full forward over the same context (a prefill
// of 6 positions, then one at a time: for Mamba2 layers the chunked scan from zero states, then
// the conv step and the recurrence from the states it left).
void expect_cached_logits_equal_the_full_forward(const ModelConfig& c) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(c, grid, 5);
  const std::vector<int32_t> ctx = {3, 70, 101, 9, 44, 250, 17, 8, 99, 1};
  auto d = model.new_decoder(1, c.seq_len);
  model.decode_chunk(*d, 0, ctx.data(), 6, nullptr);  // prefill of 6, then one at a time
  model.advance(*d, 6);
  for (size_t t = 6; t < ctx.size(); ++t) {
    model.decode_chunk(*d, 0, ctx.data() + t, 1, nullptr);
    model.advance(*d, 1);
  }
  auto mb = model.new_micro_batch();
  const int64_t S = static_cast<int64_t>(ctx.size());
  model.forward(*mb, ctx.data(), nullptr, 1, S);
  const float* want = model.logits(*mb) + (S - 1) * c.vocab_size;
  double worst = 0, scale = 0;
  for (int64_t v = 0; v < c.vocab_size; ++v) {
    worst = std::max(worst, std::fabs(double(d->logits[static_cast<size_t>(v)]) - want[v]));
    scale = std::max(scale, std::fabs(double(want[v])));
  }
  // The same fp32 products in other groupings (row counts of the GEMMs, one query vs a block; the
  // scan's chunked sums vs its recurrence, ~10 terms): a few ulps of logits of size ~scale.
  EXPECT_LE(worst, 1e-5 * scale) << "scale " << scale;
}

TEST(Generation, CachedLogitsEqualTheFullForward) { expect_cached_logits_equal_the_full_forward(model_config(true)); }
TEST(Generation, CachedLogitsEqualTheFullForwardHybridMamba) {
  expect_cached_logits_equal_the_full_forward(hybrid_config());
}

TEST(Generation, SamplingHonoursTopKAndTopP) {
  const float logits[6] = {0.0f, 3.0f, 2.9f, -1.0f, 2.0f, 1.0f};
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_k = 2;
  o.top_p = 1.0;
  Rng rng(1, "sampling-test");
  int counts[6] = {};
  for (int i = 0; i < 2000; ++i) ++counts[sample_token(logits, 6, o, rng)];
  EXPECT_EQ(counts[0] + counts[3] + counts[4] + counts[5], 0);  // only the top 2
  EXPECT_GT(counts[1], 800);
  EXPECT_GT(counts[2], 800);
  o.top_k = 0;
  o.top_p = 0.3;  // p(1) = 0.40 of the whole softmax: the nucleus is token 1 alone
  for (int i = 0; i < 200; ++i) EXPECT_EQ(sample_token(logits, 6, o, rng), 1);
  o.temperature = 0;
  EXPECT_EQ(sample_token(logits, 6, o, rng), 1);
  EXPECT_EQ(sample_token(logits, 3, o, rng), 1);  // within the first entries only
}

TEST(Generation, StopStringsCutTheTextAndEndTheSequence) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(model_config(false), grid, 21);
  ByteTokenizer tok;
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 30;
  const auto free_run = generate(model, grid, tok, {tok.encode("And")}, o);
  ASSERT_GE(free_run[0].text.size(), 6u);
  o.stop = {free_run[0].text.substr(3, 2)};  // two characters it will produce
  const auto stopped = generate(model, grid, tok, {tok.encode("And")}, o);
  EXPECT_EQ(stopped[0].finish, "stop");
  EXPECT_EQ(stopped[0].text, free_run[0].text.substr(0, free_run[0].text.find(o.stop[0])));
  EXPECT_EQ(free_run[0].finish, "length");
  EXPECT_EQ(free_run[0].tokens.size(), 30u);
}

}  // namespace
}  // namespace ff
