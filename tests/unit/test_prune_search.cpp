// The architecture search's candidates (recipes/prune/search.h, specs/methods.md §3.8): every
// candidate is a valid pruning target within the budget, with each width on its divisors, listed
// largest first; depth-only candidates keep the full width; the chosen ones include the best
// depth-only candidate.
#include <gtest/gtest.h>

#include <algorithm>

#include "models/config.h"
#include "models/decoder_lm.h"
#include "prune_helpers.h"
#include "recipes/prune/search.h"

namespace ff {
namespace {

ModelConfig search_hybrid() {
  ModelConfig c;
  c.vocab_size = 61;
  c.d_model = 32;
  c.layer_pattern = "M*M-M-";
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 8;
  c.ffn_hidden = 64;
  c.num_experts = 0;
  c.position_embedding = PositionEmbedding::none;
  c.activation = Activation::squared_relu;
  c.mamba_num_heads = 8;
  c.mamba_head_dim = 8;
  c.mamba_groups = 2;
  c.mamba_state = 4;
  c.mamba_chunk = 4;
  return c;
}

TEST(PruneSearch, CandidatesAreValidTargetsWithinTheBudgetLargestFirst) {
  const ModelConfig c = search_hybrid();
  Communicator self = Communicator::self();
  ParallelGrid one(self, ParallelConfig{});
  DecoderLM m(c, one, 3);
  const ImportanceStats st = test::calibration_of(m, test::random_tokens(2 * c.seq_len, c.vocab_size), 2, c.seq_len);
  const int64_t full = count_parameters(c);
  SearchOptions o;
  o.target_params = full * 7 / 10;
  o.tolerance = 0.4;  // [0.42, 0.7] of the model: width and depth candidates both fall in it
  const auto all = search_candidates(c, st, o);
  ASSERT_FALSE(all.empty());
  bool any_depth = false;
  for (size_t i = 0; i < all.size(); ++i) {
    const SearchCandidate& k = all[i];
    SCOPED_TRACE(k.describe());
    EXPECT_TRUE(prune_target_problems(c, k.targets).empty());
    EXPECT_EQ(k.params, count_parameters(k.config));
    EXPECT_LE(k.params, o.target_params);
    EXPECT_GE(static_cast<double>(k.params), (1 - o.tolerance) * static_cast<double>(o.target_params));
    if (i > 0) {
      EXPECT_LE(k.params, all[i - 1].params);
    }
    EXPECT_TRUE(k.config.d_model == c.d_model || k.config.d_model % 8 == 0);
    EXPECT_EQ(k.config.mamba_num_heads % c.mamba_groups, 0);
    EXPECT_TRUE(k.config.mamba_head_dim == c.mamba_head_dim || k.config.mamba_head_dim % 4 == 0);
    if (k.depth_only) {
      any_depth = true;
      EXPECT_EQ(k.config.d_model, c.d_model);
      EXPECT_EQ(k.config.ffn_hidden, c.ffn_hidden);
      EXPECT_LT(k.config.pattern().size(), c.pattern().size());
    } else {
      EXPECT_EQ(k.config.pattern(), c.pattern());
    }
  }
  ASSERT_TRUE(any_depth);
  o.candidates = 2;
  const auto chosen = choose_candidates(all, o);
  ASSERT_EQ(chosen.size(), 2u);
  EXPECT_EQ(chosen[0].describe(), all[0].describe());
  EXPECT_TRUE(chosen[0].depth_only || chosen[1].depth_only);
  o.depth = false;
  for (const SearchCandidate& k : search_candidates(c, st, o)) EXPECT_FALSE(k.depth_only);
}

}  // namespace
}  // namespace ff
