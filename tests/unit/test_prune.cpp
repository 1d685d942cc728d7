// Structured pruning (Minitron; specs/methods.md §3.5-3.6, tests of §3.10): the importance
// statistic against a hand computation; the keep sets (the lowest-scoring head goes first,
// group-aware Mamba pruning keeps equal heads per group); the pruned model (keeping everything is
// bitwise the identity, heads permuted within a group change nothing, the slices are the spec's).
#include <gtest/gtest.h>

#include <cmath>

#include "layers/importance.h"
#include "models/config.h"
#include "models/decoder_lm.h"
#include "models/prune_keep.h"
#include "prune_helpers.h"
#include "recipes/prune/prune.h"

namespace ff {
namespace {

using namespace test;

// §3.10 (vi): a [S=2, B=3, F=4] tensor, acc[f] = sum_b (mean_s |a[s, b, f]|)^2, worked by hand for
// channel 0 and checked against ImportanceStats for all.
TEST(Importance, StatisticMatchesAHandComputedValue) {
  const int64_t B = 3, S = 2, F = 4;
  std::vector<float> a(static_cast<size_t>(B * S * F));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t f = 0; f < F; ++f)
        a[static_cast<size_t>((b * S + s) * F + f)] = static_cast<float>((f + 1) * (s == 0 ? 1 : -3) + b);
  // channel 0: b = 0: |1|, |-3| -> mean 2; b = 1: |2|, |-2| -> 2; b = 2: |3|, |-1| -> 2: acc = 12.
  const auto want = importance_of_batch(a, B, S, F);
  EXPECT_DOUBLE_EQ(want[0], 12.0);
  ImportanceStats st;
  st.declare("x", F);
  Tensor t;
  t.ptr = a.data();
  t.shape = Shape{B * S, F};
  ImportanceRows rows{B, S, S, 0, B * S, {}};
  st.add("x", 0, F, t, 0, F, rows, true);
  for (int64_t f = 0; f < F; ++f) EXPECT_DOUBLE_EQ(st.raw().at("x")[static_cast<size_t>(f)], want[static_cast<size_t>(f)]);
  EXPECT_DOUBLE_EQ(st.scores("x")[0], std::sqrt(12.0));
  // A replica that does not count (a TP rank without SP) adds nothing.
  st.add("x", 0, 2, t, 0, F, rows, false);
  EXPECT_DOUBLE_EQ(st.raw().at("x")[0], want[0]);
}

TEST(PruneKeep, KeepingEverythingIsTheIdentity) {
  const std::vector<double> s = {0.3, 0.1, 0.9, 0.2, 0.5, 0.4};
  EXPECT_EQ(top_k_indices(s, 6), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  const MambaKeep k = mamba_keep_group_aware(s, 3, 2, 1, 3, 2);
  EXPECT_EQ(k.heads, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(k.channels, (std::vector<int64_t>{0, 1}));
}

// §3.10 (ii), (iii): a head with zero scores (its x rows zeroed) goes first; group-aware pruning
// keeps H' / G heads in every group, the same P' channels in every head.
TEST(PruneKeep, GroupAwareMambaKeepsEqualHeadsPerGroup) {
  const int64_t H = 8, P = 4, G = 2;
  std::vector<double> s(static_cast<size_t>(H * P));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t p = 0; p < P; ++p) s[static_cast<size_t>(h * P + p)] = 1.0 + 0.1 * h + (p == 2 ? 5.0 : 0.0) - 0.01 * p;
  for (int64_t p = 0; p < P; ++p) s[static_cast<size_t>(5 * P + p)] = 0;  // head 5 (group 1) zeroed
  const MambaKeep aware = mamba_keep_group_aware(s, H, P, G, 6, 2);
  EXPECT_EQ(aware.channels, (std::vector<int64_t>{0, 2}));  // channel 2 strongest, then channel 0
  EXPECT_EQ(aware.heads, (std::vector<int64_t>{1, 2, 3, 4, 6, 7}));  // 3 per group; 0 and 5 dropped
  // Group-unaware: the global top 6 (heads 2, 3, 4, 1, 6, 7 by score, zeroed 5 and weakest 0 out)
  // happen to be the same set here; make group 1 strong to see the difference.
  for (int64_t p = 0; p < P; ++p)
    for (int64_t h = 4; h < 8; ++h)
      if (h != 5) s[static_cast<size_t>(h * P + p)] += 10;
  const MambaKeep unaware = mamba_keep_group_unaware(s, H, P, G, 4, 2);
  EXPECT_EQ(unaware.heads, (std::vector<int64_t>{3, 4, 6, 7}));  // 1 from group 0, 3 from group 1
  const MambaKeep aware4 = mamba_keep_group_aware(s, H, P, G, 4, 2);
  EXPECT_EQ(aware4.heads, (std::vector<int64_t>{2, 3, 6, 7}));  // 2 per group
  EXPECT_THROW(mamba_keep_group_aware(s, H, P, G, 5, 2), Error);  // 5 heads do not split over 2 groups
}

TEST(PruneKeep, AttentionHeadsRankWithinTheirQueryGroup) {
  // 4 query heads of dh 2 in 2 query groups; keep 1 per group.
  const std::vector<double> s = {1, 1, 3, 3, 5, 5, 2, 2};
  EXPECT_EQ(attention_heads_keep(s, 4, 2, 2, 2), (std::vector<int64_t>{1, 2}));
  EXPECT_THROW(attention_heads_keep(s, 4, 2, 2, 3), Error);
}

// A tiny hybrid (Mamba2 in 2 groups of 2 heads, attention, MLP) on one process.
ModelConfig tiny_hybrid() {
  ModelConfig c;
  c.vocab_size = 29;
  c.d_model = 16;
  c.layer_pattern = "M*M-";
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 9;
  c.ffn_hidden = 24;
  c.num_experts = 0;
  c.position_embedding = PositionEmbedding::none;
  c.activation = Activation::squared_relu;
  c.mamba_num_heads = 4;
  c.mamba_head_dim = 4;
  c.mamba_groups = 2;
  c.mamba_state = 3;
  c.mamba_chunk = 4;
  c.init_std = 0.3;
  return c;
}

// §3.10 (i): keeping everything gives the model back bit for bit.
TEST(Prune, KeepingEverythingIsBitwiseTheIdentity) {
  Communicator self = Communicator::self();
  ParallelGrid grid(self, ParallelConfig{});
  const ModelConfig c = tiny_hybrid();
  DecoderLM m(c, grid, 5);
  const auto tokens = random_tokens(2 * c.seq_len, c.vocab_size);
  const PrunePlan plan = plan_pruning(c, calibration_of(m, tokens, 2, c.seq_len), PruneTargets{});
  EXPECT_EQ(plan.to.pattern(), c.pattern());
  DecoderLM same(plan.to, grid, 6);
  fill_pruned(same, plan, source_of(m));
  for (const Param& p : same.params().params()) {
    const Param* q = m.params().find(p.name);
    ASSERT_NE(q, nullptr) << p.name;
    for (int64_t i = 0; i < p.numel(); ++i) ASSERT_EQ(p.value[i], q->value[i]) << p.name;
  }
  EXPECT_EQ(logits_of(same, tokens, 2, c.seq_len), logits_of(m, tokens, 2, c.seq_len));
}

// §3.10 (iv): heads permuted within their group (with every tensor sliced alike: z, x, dt rows,
// the conv's x channels, dt_bias, A_log, D, the norm, out_proj's columns) leave the output
// unchanged, up to the GEMMs' summation order.
TEST(Prune, PermutingHeadsWithinAGroupLeavesTheOutputUnchanged) {
  Communicator self = Communicator::self();
  ParallelGrid grid(self, ParallelConfig{});
  const ModelConfig c = tiny_hybrid();
  DecoderLM m(c, grid, 5);
  const auto tokens = random_tokens(2 * c.seq_len, c.vocab_size);
  PrunePlan plan;
  plan.from = plan.to = c;
  plan.embedding = all_of(c.d_model);
  plan.layers = all_of(4);
  plan.keep = {{{1, 0, 3, 2}, all_of(4), {}}, {all_of(4), {}, {}}, {{0, 1, 3, 2}, {2, 0, 1, 3}, {}}, {all_of(c.ffn_hidden), {}, {}}};
  DecoderLM permuted(c, grid, 6);
  fill_pruned(permuted, plan, source_of(m));
  const auto want = logits_of(m, tokens, 2, c.seq_len), got = logits_of(permuted, tokens, 2, c.seq_len);
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(double(want[i])));
  }
  EXPECT_LE(worst, 1e-5 * scale);  // fp32 sums of a few dozen terms in another order
  // Across groups it is a different model (heads meet other B and C, other norm groups).
  plan.keep[0].hidden = {2, 1, 0, 3};
  fill_pruned(permuted, plan, source_of(m));
  const auto across = logits_of(permuted, tokens, 2, c.seq_len);
  double moved = 0;
  for (size_t i = 0; i < want.size(); ++i) moved = std::max(moved, std::fabs(double(across[i]) - want[i]));
  EXPECT_GT(moved, 1e-3 * scale);
}

// §3.10 (iii), (v): the pruned model keeps equal heads per group and B, C whole; its Mamba layer
// computes on exactly the kept rows and columns (checked tensor by tensor against the source),
// and it differs from zero-masking the dropped heads (the group RMS changes).
TEST(Prune, PrunedMambaKeepsGroupsAndSlicesAsTheSpecSays) {
  Communicator self = Communicator::self();
  ParallelGrid grid(self, ParallelConfig{});
  const ModelConfig c = tiny_hybrid();
  DecoderLM m(c, grid, 5);
  const auto tokens = random_tokens(2 * c.seq_len, c.vocab_size);
  PruneTargets t;
  t.mamba_num_heads = 2;
  t.mamba_head_dim = 3;
  t.ffn_hidden = 12;
  t.d_model = 12;
  const PrunePlan plan = plan_pruning(c, calibration_of(m, tokens, 2, c.seq_len), t);
  EXPECT_EQ(plan.to.mamba_num_heads, 2);
  EXPECT_EQ(plan.to.mamba_head_dim, 3);
  EXPECT_EQ(plan.to.mamba_groups, 2);
  for (size_t k : {size_t(0), size_t(2)}) {  // the Mamba layers: one head from each group
    ASSERT_EQ(plan.keep[k].hidden.size(), 2u);
    EXPECT_LT(plan.keep[k].hidden[0], 2);
    EXPECT_GE(plan.keep[k].hidden[1], 2);
  }
  DecoderLM pruned(plan.to, grid, 6);
  fill_pruned(pruned, plan, source_of(m));
  const TensorSource src = source_of(m);
  HostTensor b;
  src("model.layers.0.mixer.in_proj_B.weight", b);
  const Param* pb = pruned.params().find("model.layers.0.mixer.in_proj_B.weight");
  ASSERT_EQ(pb->global_shape.vec(), (std::vector<int64_t>{6, 12}));  // all G N rows
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t k = 0; k < 12; ++k)
      EXPECT_EQ(pb->value[r * 12 + k], b.data[static_cast<size_t>(r * 16 + plan.embedding[static_cast<size_t>(k)])]);
  HostTensor x;
  src("model.layers.0.mixer.in_proj_x.weight", x);
  const Param* px = pruned.params().find("model.layers.0.mixer.in_proj_x.weight");
  const int64_t h1 = plan.keep[0].hidden[1], p1 = plan.keep[0].channels[2];
  // Pruned row 1 * 3 + 2 is source row h1 * 4 + p1.
  EXPECT_EQ(px->value[(1 * 3 + 2) * 12 + 5], x.data[static_cast<size_t>((h1 * 4 + p1) * 16 + plan.embedding[5])]);
  const auto got = logits_of(pruned, tokens, 2, c.seq_len);
  for (float v : got) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(count_parameters(plan.to), [&] {
    int64_t n = 0;
    for (const Param& p : pruned.params().params()) n += p.numel();
    return n;
  }());
}

TEST(Prune, BadTargetsGetOneClearErrorEach) {
  const ModelConfig c = tiny_hybrid();
  PruneTargets t;
  t.d_model = 32;          // larger than the model
  t.mamba_num_heads = 3;   // not a multiple of 2 groups
  t.num_heads = 3;         // not a multiple of 2 KV heads
  const auto e = prune_target_problems(c, t);
  ASSERT_EQ(e.size(), 3u);
  EXPECT_NE(e[0].find("--target_d_model 32"), std::string::npos);
  EXPECT_NE(e[1].find("--target_num_heads 3"), std::string::npos);
  EXPECT_NE(e[2].find("--target_mamba_num_heads 3: must be a multiple of model.mamba_groups = 2"), std::string::npos);
}

}  // namespace
}  // namespace ff
