// Pruning importance under a parallel layout (specs/methods.md §3.5): the statistics of the
// calibration forwards (recipes/prune/prune_run.h CalibrationPass), gathered over the TP slices,
// SP rows, CP chunks, DP replicas, EP and ETP ranks (the experts' mean output norms and their
// neurons' scores) and pipeline stages, equal those of one process that runs every replica's
// batch, and so do the keep sets pruning takes from them.
#include <gtest/gtest.h>

#include <cmath>

#include "invariance.h"
#include "models/decoder_lm.h"
#include "recipes/prune/prune.h"
#include "recipes/prune/prune_run.h"

namespace ff {
namespace {

using namespace test;

// Under pipeline stages alone (no data parallelism nor TP/CP/EP) every statistic is the one
// process's to the bit: each stage runs its layers on the same rows with the same arithmetic, and
// the world's sum adds the other stages' zeros. Otherwise the activations are fp32 in other
// summation orders (TP's partial sums, SP's gathers, ETP's partial expert outputs, expert GEMMs over
// other row groupings): relative 1e-5 of each entry's largest value, squared statistics 2e-5.
void expect_importance_invariant(const ModelConfig& cfg, const ParallelConfig& pc) {
  SCOPED_TRACE(strprintf("tp %lld (sp %d) cp %lld ep %lld etp %lld pp %lld x %lld chunks", (long long)pc.tp,
                         int(pc.sequence_parallel), (long long)pc.cp, (long long)pc.ep, (long long)pc.expert_tp(),
                         (long long)pc.pp, (long long)pc.virtual_stages));
  Communicator world = Communicator::world(), self = Communicator::self();
  ParallelGrid grid(world, pc), one(self, ParallelConfig{});
  DecoderLM model(cfg, grid, 11), ref(cfg, one, 11);
  ImportanceStats got, want;
  model.declare_importance(got);
  ref.declare_importance(want);
  const int64_t B = 2, DP = grid.dp_size();
  CalibrationPass pass(model, grid), ref_pass(ref, one);
  for (int64_t step = 0; step < 2; ++step) {
    Batch b = micro_batch(step, grid.dp().rank(), B, cfg);
    pass.add(b.tokens.data(), B, cfg.seq_len, got);
    for (int64_t d = 0; d < DP; ++d) {  // (the batch counts differ; they are not compared)
      Batch rb = micro_batch(step, d, B, cfg);
      ref_pass.add(rb.tokens.data(), B, cfg.seq_len, want);
    }
  }
  got.finish(world);
  want.finish(self);
  const bool exact = pc.tp == 1 && pc.cp == 1 && pc.ep == 1 && DP == 1;
  for (const auto& [name, acc] : want.raw()) {
    const auto& g = got.raw().at(name);
    double scale = 0;
    for (double v : acc) scale = std::max(scale, v);
    for (size_t f = 0; f < acc.size(); ++f) {
      if (exact) {
        ASSERT_EQ(g[f], acc[f]) << name << " channel " << f;
      }
      ASSERT_NEAR(g[f], acc[f], 2e-5 * scale + 1e-12) << name << " channel " << f;
    }
    if (name.find("layernorm") != std::string::npos) {
      if (exact) {
        EXPECT_EQ(got.mean(name), want.mean(name)) << name;
      }
      EXPECT_NEAR(got.mean(name), want.mean(name), 1e-5 * std::fabs(want.mean(name)) + 1e-9) << name;
    }
  }
  // The experts: the same (token, expert) slots counted, their mean output norms.
  for (const auto& [name, m] : want.raw_means()) {
    EXPECT_EQ(got.raw_means().at(name).count, m.count) << name;
    const auto w = want.means(name), g = got.means(name);
    for (size_t e = 0; e < w.size(); ++e) {
      if (exact) {
        ASSERT_EQ(g[e], w[e]) << name << " expert " << e;
      }
      ASSERT_NEAR(g[e], w[e], 1e-5 * w[e] + 1e-12) << name << " expert " << e;
    }
  }
  // The keep sets pruning takes from them (the pruned model is those slices of the source).
  PruneTargets t;
  t.d_model = cfg.d_model / 2;
  t.mamba_num_heads = cfg.mamba_num_heads / 2;
  t.num_experts = cfg.num_experts / 2;
  t.moe_ffn_hidden = cfg.num_experts > 0 ? cfg.moe_ffn_hidden / 2 : 0;
  t.layers = 3;
  const PrunePlan pg = plan_pruning(cfg, got, t), pw = plan_pruning(cfg, want, t);
  EXPECT_EQ(pg.embedding, pw.embedding);
  EXPECT_EQ(pg.layers, pw.layers);
  ASSERT_EQ(pg.keep.size(), pw.keep.size());
  for (size_t k = 0; k < pw.keep.size(); ++k) {
    EXPECT_EQ(pg.keep[k].hidden, pw.keep[k].hidden) << "layer " << k;
    EXPECT_EQ(pg.keep[k].channels, pw.keep[k].channels) << "layer " << k;
    EXPECT_EQ(pg.keep[k].experts, pw.keep[k].experts) << "layer " << k;
  }
}

TEST(PruneImportance, EqualsOneProcessUnderEveryLayout) {
  expect_importance_invariant(tiny_hybrid(), layout(1));               // DP over all ranks
  expect_importance_invariant(tiny_hybrid(), tensor_layout(2, false));  // TP: head and neuron slices
  expect_importance_invariant(tiny_hybrid(), tensor_layout(2, true));   // + SP: rows of the stream
  ParallelConfig cp;
  cp.cp = 2;
  expect_importance_invariant(tiny_hybrid(), cp);                       // CP: chunks, Mamba's share
  expect_importance_invariant(tiny_hybrid(true), layout(max_ep()));     // a hybrid MoE under EP
  expect_importance_invariant(tiny_hybrid(true), tensor_layout(2, true));
  expect_importance_invariant(tiny_hybrid(true), tensor_layout(2, true, 1, 2));  // ETP 2: partial expert outputs
}

// Pipeline stages: each stage takes its own layers' statistics (a layer's input and output, for the
// depth score, are on its stage); with 4 ranks also with EP 2, TP 2 + SP and ETP 2 x EP 2 beside.
TEST(PruneImportance, EqualsOneProcessUnderPipelineStages) {
  ParallelConfig pp;
  pp.pp = 2;
  expect_importance_invariant(tiny_hybrid(true), pp);
  expect_importance_invariant(tiny_hybrid(), pp);
  ParallelConfig interleaved = pp;  // 2 chunks of one layer per stage, the activations around the ring
  interleaved.virtual_stages = 2;
  expect_importance_invariant(tiny_hybrid(true), interleaved);
  if (world_size() < 4) return;
  ParallelConfig ep = layout(2);
  ep.pp = 2;
  expect_importance_invariant(tiny_hybrid(true), ep);
  ParallelConfig tp = tensor_layout(2, true);
  tp.pp = 2;
  expect_importance_invariant(tiny_hybrid(true), tp);
  ParallelConfig etp = tensor_layout(2, true, 2, 2);
  expect_importance_invariant(tiny_hybrid(true), etp);
}

}  // namespace
}  // namespace ff
