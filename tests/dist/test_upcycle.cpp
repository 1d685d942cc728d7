// Online upcycling (train/upcycle.h): each rank builds only its own experts (and its TP / ETP
// slices) from the dense model's tensors while loading; under EP over all ranks, EP 2 with expert
// data parallelism, and EP 2 folded over TP 2 (ETP 1), every tensor equals the single-process
// conversion's, bit for bit (the same elementwise products), and the loss of one batch does too,
// to the invariance tests' tolerance.
#include <gtest/gtest.h>

#include <filesystem>

#include "invariance.h"
#include "models/decoder_lm.h"
#include "train/model_source.h"
#include "train/objective.h"
#include "train/pipeline.h"
#include "train/trainer.h"
#include "train/upcycle.h"

namespace ff {
namespace {

using namespace test;

void expect_online_equals_offline(const ParallelConfig& pc) {
  Communicator world = Communicator::world(), self = Communicator::self();
  ParallelGrid grid(world, pc), one(self, ParallelConfig{});
  ModelConfig dense = tiny_dense();
  dense.ffn_hidden = 24;
  const std::string path = (std::filesystem::temp_directory_path() / "fivefold_dist_upcycle_dense.safetensors").string();
  if (world.rank() == 0) {
    DecoderLM d(dense, one, 7);
    RunConfig rc;
    rc.model = dense;
    save_model(d, rc, path);
  }
  world.barrier();
  UpcycleOptions o;
  o.experts = 8;
  o.top_k = 4;
  o.granularity = 2;
  ModelConfig moe = upcycled_config(dense, o);
  moe.moe_aux_loss_coeff = 0;
  const ModelSource src = open_model_source(path);
  const TensorTransform up = [&](const TensorFetch& f, const std::string& n, HostTensor& t) {
    return upcycled_tensor(src.config.model, o, f, n, t);
  };
  DecoderLM online(moe, grid, 1), offline(moe, one, 2);
  load_model_source(src, online, {}, up);
  load_model_source(src, offline, {}, up);
  int64_t experts_here = 0;
  for (const Param& p : online.params().params()) {
    const Param* q = offline.params().find(p.name);
    ASSERT_NE(q, nullptr) << p.name;
    EXPECT_TRUE(tensors_match(p, *q, /*values=*/true, 0.0)) << p.name;
    experts_here += p.name.find(".experts.") != std::string::npos;
  }
  // Each rank holds only its experts: 8 per layer over the EP group, 2 projections each (squared
  // ReLU has up and down) or 3 (SwiGLU).
  const int64_t per_expert = moe.activation == Activation::swiglu ? 3 : 2;
  EXPECT_EQ(experts_here, 2 * per_expert * 8 / grid.ep().size());
  // One batch's loss, through the pipeline executor under this layout, as the one process's.
  const Batch b = micro_batch(0, grid.dp().rank(), 2, moe);
  PipelineExecutor pipe(online, grid, 1), ref_pipe(offline, one, 1);
  const TokenMeanCrossEntropy mean(static_cast<double>(count_targets(b.targets)));
  const double got = pipe.evaluate(b.tokens, b.targets, 2, moe.seq_len, mean).loss;
  const double want = ref_pipe.evaluate(b.tokens, b.targets, 2, moe.seq_len, mean).loss;
  EXPECT_NEAR(got, want, 1e-5 * std::fabs(want));
}

TEST(Upcycle, OnlineUnderExpertParallelismEqualsOffline) {
  expect_online_equals_offline(layout(max_ep()));
  if (world_size() >= 4) {
    expect_online_equals_offline(layout(2));  // EP 2 x expert-DP
    expect_online_equals_offline(tensor_layout(2, true, 2, 1));  // EP 2 folded over TP 2
  }
}

}  // namespace
}  // namespace ff
