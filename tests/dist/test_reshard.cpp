// Reshardable checkpoints: train under one parallel layout, save (every rank writes its slices with
// their global placement), load under another layout (each rank assembles its slices from the
// stored chunks, Adam moments included), continue, and match the single-process run that never
// changed layout. The global batch is G micro-batches per step whatever the layout: a layout with
// DP replicas gives each G / DP of them.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "io/checkpoint.h"
#include "models/decoder_lm.h"
#include "tiny_model.h"
#include "optim/distributed_optimizer.h"
#include "optim/optimizer.h"
#include "parallel/data_parallel.h"
#include "train/objective.h"
#include "train/pipeline.h"

namespace ff {
namespace {

constexpr int64_t kGlobalMicroBatches = 8, kB = 2;

ModelConfig reshard_model() {
  ModelConfig c = test::tiny_moe();
  c.moe_z_loss_coeff = 0;
  return c;
}

std::vector<int32_t> micro_batch(int64_t step, int64_t index, bool targets, const ModelConfig& c) {
  Rng rng(91, targets ? "reshard-targets" : "reshard-tokens", static_cast<uint64_t>(step * 100 + index));
  std::vector<int32_t> v(static_cast<size_t>(kB * c.seq_len));
  for (auto& t : v) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
  return v;
}

OptimizerConfig optim_config() {
  OptimizerConfig oc;
  oc.lr = 1e-2;
  oc.warmup_steps = 0;
  return oc;
}

// Runs steps [first, last) of the global schedule on `model` under `grid`, with `dist` when given,
// else `opt`. Returns the losses.
std::vector<double> train_steps(DecoderLM& model, AdamW& opt, const ParallelGrid& grid, int64_t first, int64_t last,
                                DistributedAdamW* dist = nullptr) {
  const ModelConfig& c = model.config();
  const int64_t DP = grid.dp_size(), M = kGlobalMicroBatches / DP, replica = grid.dp().rank();
  PipelineExecutor pipe(model, grid, M);
  std::vector<double> losses;
  for (int64_t step = first; step < last; ++step) {
    std::vector<std::vector<int32_t>> tokens, targets;
    for (int64_t m = 0; m < M; ++m) {
      tokens.push_back(micro_batch(step, replica * M + m, false, c));
      targets.push_back(micro_batch(step, replica * M + m, true, c));
    }
    model.params().zero_grads();
    const TokenMeanCrossEntropy objective(static_cast<double>(step_target_count(targets, grid.dp())));
    PipelineResult r = pipe.run(tokens, targets, kB, c.seq_len, objective);
    model.synchronize_tied_embeddings();
    if (dist) {
      dist->step(optim_config().lr);
    } else {
      reduce_gradients(model.params(), grid);
      opt.step(optim_config().lr, grid.mp(), grid.expert_mp());
    }
    model.end_of_step();
    double loss = r.loss;  // the replicas' contributions add up to the step's loss
    grid.dp().all_reduce_sum(&loss, 1);
    losses.push_back(loss);
  }
  return losses;
}

// distributed_before / _after: the distributed optimizer (sharded moments) on that side.
void expect_reshard(const ParallelConfig& before, const ParallelConfig& after, bool distributed_before = false,
                    bool distributed_after = false) {
  Communicator world = Communicator::world();
  const ModelConfig c = reshard_model();
  const std::string dir = (std::filesystem::temp_directory_path() / "fivefold_reshard").string();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
  world.barrier();

  // The run that never changes layout: one process, 4 steps.
  Communicator self = Communicator::self();
  ParallelGrid one(self, ParallelConfig{});
  DecoderLM ref(c, one, 5);
  AdamW ref_opt(ref.params(), optim_config());
  std::vector<double> want = train_steps(ref, ref_opt, one, 0, 4);

  std::vector<double> got;
  {
    ParallelGrid grid(world, before);
    DecoderLM model(c, grid, 5);
    AdamW opt(model.params(), optim_config());
    DistributedAdamW dist(model.params(), optim_config(), grid);
    got = train_steps(model, opt, grid, 0, 2, distributed_before ? &dist : nullptr);
    std::vector<float> m = opt.exp_avg(), v = opt.exp_avg_sq();
    if (distributed_before) dist.gather_moments(m, v);
    CheckpointContents contents{&model.params(), &m, &v, {}};
    TrainingState state;
    state.step = 2;
    state.optimizer_steps = 2;
    save_checkpoint(dir, contents, state, world, 0);
  }
  {
    ParallelGrid grid(world, after);
    DecoderLM model(c, grid, 777);  // other initial values: everything must come from the checkpoint
    AdamW opt(model.params(), optim_config());
    DistributedAdamW dist(model.params(), optim_config(), grid);
    const std::string folder = resolve_checkpoint(dir);
    std::vector<float> m(static_cast<size_t>(model.params().numel())), v(m.size());
    load_checkpoint_tensors(folder, CheckpointContents{&model.params(), &m, &v, {}});
    const int64_t steps = read_checkpoint_state(folder, world.rank()).optimizer_steps;
    if (distributed_after) {
      dist.scatter_moments(m, v);
      dist.set_steps_taken(steps);
    } else {
      opt.exp_avg() = m;
      opt.exp_avg_sq() = v;
      opt.set_steps_taken(steps);
    }
    auto more = train_steps(model, opt, grid, 2, 4, distributed_after ? &dist : nullptr);
    got.insert(got.end(), more.begin(), more.end());
    // The parameters this rank holds equal the reference's after four steps.
    for (const Param& p : model.params().params()) {
      const Param* q = ref.params().find(p.name);
      ASSERT_NE(q, nullptr) << p.name;
      const int64_t cols = p.global_shape.rank == 2 ? p.global_shape[1] : p.global_shape.numel();
      const int64_t lc = p.global_shape.rank == 2 ? p.local_shape[1] : p.local_shape.numel();
      const int64_t r0 = p.global_shape.rank == 2 ? p.local_offset[0] : 0;
      const int64_t c0 = p.global_shape.rank == 2 ? p.local_offset[1] : (p.local_offset.rank ? p.local_offset[0] : 0);
      double worst = 0;
      for (int64_t i = 0; i < p.numel(); ++i)
        worst = std::max(worst, std::fabs(double(p.value[i]) - double(q->value[(r0 + i / lc) * cols + c0 + i % lc])));
      EXPECT_LT(worst, 1e-5) << p.name;
    }
  }
  ASSERT_EQ(got.size(), want.size());
  for (size_t s = 0; s < want.size(); ++s) EXPECT_NEAR(got[s], want[s], 1e-5 * want[s]) << "step " << s;
  world.barrier();
}

ParallelConfig layout(int64_t tp, int64_t pp, int64_t ep, int64_t cp = 1) {
  ParallelConfig p;
  p.tp = tp;
  p.pp = pp;
  p.ep = ep;
  p.cp = cp;
  p.etp = 1;
  p.sequence_parallel = tp > 1;
  return p;
}

TEST(Reshard, TwoRankLayouts) {
  if (Communicator::world().size() != 2) GTEST_SKIP() << "the two-rank pairs";
  expect_reshard(layout(2, 1, 2), layout(1, 2, 1));  // TP 2 x EP 2 -> PP 2 x DP 1
  expect_reshard(layout(1, 1, 1, 2), layout(2, 1, 1));  // CP 2 -> TP 2
  expect_reshard(layout(1, 1, 2), layout(2, 1, 1), true, false);  // distributed optimizer -> plain
  expect_reshard(layout(2, 1, 1), layout(1, 1, 2), false, true);  // plain -> distributed optimizer
}

TEST(Reshard, TensorPipelineExpertToExpertOnly) {
  if (Communicator::world().size() != 8) GTEST_SKIP() << "the issue's pair runs on 8 ranks";
  expect_reshard(layout(2, 2, 2), layout(1, 1, 4));  // TP 2 x PP 2 x EP 2 -> TP 1 x EP 4 (DP 8)
  expect_reshard(layout(1, 1, 4), layout(2, 2, 2));
  expect_reshard(layout(2, 2, 2), layout(1, 1, 4), true, true);  // distributed optimizer on both sides
}

// PPO's split placement: the first half of the ranks hold role "model", the rest "critic", each
// role's [2 holders, 3] tensor in rows over its holders. One checkpoint holds both; it lists only
// the holders' files, takes each role's optimizer steps from its holders, and assembles both whole.
TEST(Reshard, ModelsHeldByDisjointRankGroups) {
  Communicator world = Communicator::world();
  if (world.size() < 2) GTEST_SKIP() << "needs two rank groups";
  const int W = world.size(), half = W / 2;
  const bool actor = world.rank() < half;
  const int holders = actor ? half : W - half, index = actor ? world.rank() : world.rank() - half;
  const std::string dir = (std::filesystem::temp_directory_path() / ("fivefold_split_roles_np" + std::to_string(W))).string();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
  world.barrier();
  auto value = [](bool model, int64_t i) { return static_cast<float>((model ? 1000 : 2000) + i); };
  ParamStore store;
  Param* p = store.add("w", Shape{2, 3}, ParamInit::zeros);
  p->global_shape = Shape{2 * holders, 3};
  p->local_offset = Shape{2 * index, 0};
  store.allocate(0);
  for (int64_t j = 0; j < 6; ++j) p->value[j] = value(actor, 6 * index + j);
  std::vector<float> m(6, actor ? 0.5f : 0.25f), v(6, 1.0f);
  CheckpointContents held{&store, &m, &v, {}}, elsewhere;
  held.role = actor ? "model" : "critic";
  held.optimizer_steps = actor ? 5 : 9;
  elsewhere.role = actor ? "critic" : "model";
  TrainingState state;
  state.step = 3;
  state.optimizer_steps = 5;  // rank 0's: it holds "model"
  const std::vector<CheckpointContents> models =
      actor ? std::vector<CheckpointContents>{held, elsewhere} : std::vector<CheckpointContents>{elsewhere, held};
  const std::string folder = save_checkpoint(dir, models, state, world, 0);
  const TrainingState back = read_checkpoint_state(folder, world.rank());
  EXPECT_EQ(back.role_optimizer_steps.at("model"), 5);
  EXPECT_EQ(back.role_optimizer_steps.at("critic"), 9);
  EXPECT_EQ(checkpoint_roles(folder), (std::vector<std::string>{"model", "critic"}));
  for (const bool model : {true, false}) {
    const auto whole = read_checkpoint_model(folder, model ? "model" : "critic");
    const int n = model ? half : W - half;
    ASSERT_EQ(whole.at("w").shape, (std::vector<int64_t>{2 * n, 3}));
    for (int64_t i = 0; i < 6 * n; ++i) EXPECT_EQ(whole.at("w").data[static_cast<size_t>(i)], value(model, i));
  }
  // This rank's slice and moments load back into a store of its own role.
  ParamStore again;
  Param* q = again.add("w", Shape{2, 3}, ParamInit::zeros);
  q->global_shape = p->global_shape;
  q->local_offset = p->local_offset;
  again.allocate(1);
  std::vector<float> m2(6), v2(6);
  CheckpointContents into{&again, &m2, &v2, {}};
  into.role = held.role;
  load_checkpoint_tensors(folder, into);
  for (int64_t j = 0; j < 6; ++j) EXPECT_EQ(q->value[j], p->value[j]);
  EXPECT_EQ(m2, m);
  world.barrier();
}

}  // namespace
}  // namespace ff
