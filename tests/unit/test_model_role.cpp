// Several models in one job (train/model_role.h): two trainable models, each with its own
// optimizer, saved under their roles in one checkpoint and resumed, continue exactly as an
// uninterrupted run (bit for bit: fp32 on one process, the same arithmetic in the same order).
#include <gtest/gtest.h>

#include <filesystem>

#include "io/checkpoint.h"
#include "train/data.h"
#include "train/model_role.h"
#include "train/objective.h"
#include "train/run_checkpoint.h"
#include "test_util.h"

namespace ff {
namespace {

constexpr int64_t kVocab = 29, kB = 2;

ModelConfig policy_config() { return test::small_model("*-*E", kVocab); }
ModelConfig critic_config() {  // another shape and head: a value model, as PPO's critic
  ModelConfig c = test::small_model("*-", kVocab);
  c.d_model = 8;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head = HeadKind::value;
  return c;
}

OptimizerConfig optim(bool distributed) {
  OptimizerConfig oc;
  oc.lr = 1e-2;
  oc.warmup_steps = 0;
  oc.distributed = distributed;
  return oc;
}

// One step of both models on the batch of `step`: forward, the objective's backward, the update.
// The critic's objective, -mean(value), is only something with a gradient.
void train_step(ModelRole& policy, ModelRole& critic, int64_t step) {
  Rng rng(100 + static_cast<uint64_t>(step), "role-batch");
  const int64_t S = policy.model().config().seq_len;
  std::vector<int32_t> tokens, targets;
  for (int64_t i = 0; i < kB * S; ++i) {
    tokens.push_back(static_cast<int32_t>(rng.below(kVocab)));
    targets.push_back(i % 5 == 0 ? -1 : static_cast<int32_t>(rng.below(kVocab)));
  }
  for (ModelRole* r : {&policy, &critic}) {
    auto mb = r->model().new_micro_batch();
    r->model().params().zero_grads();
    forward_mean_ce(r->model(), *mb, tokens.data(), targets.data(), kB, S);
    backward_mean_ce(r->model(), *mb, 1.0f);
    r->optimizer_step(1e-2);
  }
}

std::vector<float> values(const ModelRole& r) {
  std::vector<float> v;
  for (const Param& p : r.model().params().params()) v.insert(v.end(), p.value, p.value + p.numel());
  return v;
}

void resumes_exactly(bool distributed) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  RunConfig cfg;
  cfg.model = policy_config();
  cfg.optim = optim(distributed);
  cfg.train.out_dir = test::fresh_dir(distributed ? "roles_distributed" : "roles");
  cfg.train.steps = 3;
  cfg.train.save_interval = 2;
  SampleCursor cursor;

  ModelRole policy("model", policy_config(), cfg.optim, grid, 1), critic("critic", critic_config(), cfg.optim, grid, 2);
  for (int64_t s = 0; s < 3; ++s) train_step(policy, critic, s);

  ModelRole p2("model", policy_config(), cfg.optim, grid, 1), c2("critic", critic_config(), cfg.optim, grid, 2);
  for (int64_t s = 0; s < 2; ++s) train_step(p2, c2, s);
  RunCheckpoint saver(cfg, {&p2, &c2}, grid);
  const std::string folder = saver.save(2, cursor);
  EXPECT_TRUE(std::filesystem::exists(folder + "/critic.model.r00000.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(folder + "/critic.optim.r00000.safetensors"));
  EXPECT_EQ(checkpoint_roles(folder), (std::vector<std::string>{"model", "critic"}));
  EXPECT_EQ(read_checkpoint_model(folder, "critic").count("score.weight"), 1u);  // the value head's
  EXPECT_EQ(read_checkpoint_model(folder).count("score.weight"), 0u);

  // Fresh models with other seeds: everything they continue from comes from the checkpoint.
  ModelRole p3("model", policy_config(), cfg.optim, grid, 7), c3("critic", critic_config(), cfg.optim, grid, 8);
  cfg.train.resume = folder;
  RunCheckpoint loader(cfg, {&p3, &c3}, grid);
  const TrainingState state = loader.resume();
  EXPECT_EQ(state.step, 2);
  EXPECT_EQ(p3.optimizer_steps(), 2);
  EXPECT_EQ(c3.optimizer_steps(), 2);
  train_step(p3, c3, 2);
  EXPECT_EQ(values(p3), values(policy));
  EXPECT_EQ(values(c3), values(critic));
}

TEST(ModelRole, TwoTrainableModelsResumeExactly) { resumes_exactly(false); }
TEST(ModelRole, TwoTrainableModelsResumeExactlyWithTheDistributedOptimizer) { resumes_exactly(true); }

TEST(ModelRole, AMissingRoleIsNamed) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  RunConfig cfg;
  cfg.model = policy_config();
  cfg.optim = optim(false);
  cfg.train.out_dir = test::fresh_dir("roles_missing");
  SampleCursor cursor;
  ModelRole policy("model", policy_config(), cfg.optim, grid, 1);
  const std::string folder = RunCheckpoint(cfg, {&policy}, grid).save(1, cursor);
  ModelRole p2("model", policy_config(), cfg.optim, grid, 1), critic("critic", critic_config(), cfg.optim, grid, 2);
  cfg.train.resume = folder;
  RunCheckpoint loader(cfg, {&p2, &critic}, grid);
  try {
    loader.resume();
    FAIL() << "resumed a critic the checkpoint does not hold";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("holds no model 'critic' (it holds: model)"), std::string::npos) << e.what();
  }
}

TEST(ModelRole, AFrozenModelHasNoOptimizerAndIsNotSaved) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelRole teacher("teacher", policy_config(), grid, 1);
  EXPECT_FALSE(teacher.trainable());
  EXPECT_EQ(teacher.optimizer_state_bytes(), 0);
  EXPECT_EQ(teacher.model().params().grad_numel(), 0);
  RunConfig cfg;
  cfg.train.out_dir = test::fresh_dir("roles_frozen");
  EXPECT_THROW(RunCheckpoint(cfg, {&teacher}, grid), std::exception);
}

}  // namespace
}  // namespace ff
