#include "recipes/ppo/ppo.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/file_lock.h"
#include "io/jsonl.h"
#include "io/progress.h"
#include "recipes/ppo/ppo_objective.h"
#include "recipes/ppo/rollouts.h"
#include "train/data.h"
#include "train/model_role.h"
#include "train/model_source.h"
#include "train/pipeline.h"
#include "train/run_checkpoint.h"
#include "train/sft_data.h"
#include "train/stop_signal.h"
#include "train/trainer.h"

namespace ff {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The prompt file's prompts, rendered and tokenised; those that leave no room for a whole
// response (ppo_max_new_tokens and EOS within model.seq_len) are dropped, and said so once.
std::vector<std::vector<int32_t>> read_prompts(const RunConfig& cfg, const Tokenizer& tok, bool report) {
  const auto& tc = cfg.train;
  const int64_t longest = cfg.model.seq_len - tc.ppo_max_new_tokens - 1;
  FF_CHECK(longest >= 1, "train.ppo_max_new_tokens = %lld leaves no room for a prompt in model.seq_len = %lld",
           (long long)tc.ppo_max_new_tokens, (long long)cfg.model.seq_len);
  std::vector<std::vector<int32_t>> out;
  int64_t dropped = 0;
  for_each_jsonl(tc.data_path, "train.data_path: the PPO prompts, JSONL with a \"" + tc.sft_prompt_key + "\" per record",
                 [&](const nlohmann::json& j, const std::string& where) {
    FF_CHECK(j.is_object() && j.contains(tc.sft_prompt_key) && j[tc.sft_prompt_key].is_string() &&
             !j[tc.sft_prompt_key].get<std::string>().empty(), "%s: a PPO prompt record needs a non-empty \"%s\" "
             "(train.sft_prompt_key names it)", where.c_str(), tc.sft_prompt_key.c_str());
    const std::string p = j[tc.sft_prompt_key].get<std::string>();
    auto ids = tok.encode(tc.chat_template == ChatTemplate::none ? p : chat_prompt(p, tc.chat_template));
    if (static_cast<int64_t>(ids.size()) > longest) {
      ++dropped;
      return;
    }
    out.push_back(std::move(ids));
  });
  FF_CHECK(!out.empty(), "train.data_path '%s': no prompt fits in %lld tokens (model.seq_len %lld minus "
           "train.ppo_max_new_tokens %lld and EOS)", tc.data_path.c_str(), (long long)longest,
           (long long)cfg.model.seq_len, (long long)tc.ppo_max_new_tokens);
  if (report && dropped > 0)
    std::printf("PPO: %lld of %lld prompts are longer than %lld tokens and were left out\n", (long long)dropped,
                (long long)(dropped + static_cast<int64_t>(out.size())), (long long)longest);
  return out;
}

// A model source's config for a role of this job: the run's precision, the layout checked.
ModelConfig role_config(const ModelSource& src, const RunConfig& cfg, const char* role, const std::string& field) {
  ModelConfig c = src.config.model;
  c.precision = cfg.model.precision;
  c.head_chunk_rows = 0;
  FF_CHECK(c.vocab_size == cfg.model.vocab_size, "train.%s '%s' has model.vocab_size = %lld, the actor %lld: PPO's "
           "models score the same tokens", field.c_str(), src.path.c_str(), (long long)c.vocab_size,
           (long long)cfg.model.vocab_size);
  const auto layout = layout_problems(c, cfg.parallel);
  if (!layout.empty())
    throw UserError(strprintf("the %s (train.%s '%s') cannot run on this job's layout, which it shares with the "
                              "actor: %s", role, field.c_str(), src.path.c_str(), layout[0].c_str()));
  return c;
}

// The critic's AdamW: the actor's settings at the critic's peak lr, its floor scaled alike.
OptimizerConfig critic_optimizer(const RunConfig& cfg) {
  OptimizerConfig co = cfg.optim;
  co.lr = cfg.train.ppo_critic_lr;
  co.min_lr = cfg.optim.lr > 0 ? co.lr * cfg.optim.min_lr / cfg.optim.lr : 0.0;
  return co;
}

struct IterationMetrics {
  double reward = 0, kl = 0, length = 0, ended = 0;            // means over the sequences
  double actor_loss = 0, critic_loss = 0, actor_clip = 0, critic_clip = 0, ratio = 0, entropy = 0;
  double advantage_mean = 0, advantage_std = 0, actor_grad_norm = 0, critic_grad_norm = 0;
  double lr = 0, critic_lr = 0, rollout_s = 0, score_s = 0, train_s = 0, generated_tokens_per_s = 0;
};

class PpoJob {
 public:
  PpoJob(const RunConfig& cfg, const ParallelGrid& grid, bool quiet);
  void run();

 private:
  IterationMetrics iteration(int64_t it);
  void score(const Rollouts& ro, std::vector<std::vector<float>>& logp, std::vector<std::vector<float>>& ref,
             std::vector<std::vector<float>>& values, std::vector<std::vector<float>>& rm);
  void write_models(int64_t iterations, const DataCursor& cursor, RunCheckpoint& ckpt);

  RunConfig cfg_;
  const ParallelGrid& grid_;
  bool quiet_, lead_, reporter_;  // reporter: the last stage's first TP and CP rank of a replica
  std::unique_ptr<Tokenizer> tok_;
  std::vector<std::vector<int32_t>> prompts_;
  ModelConfig critic_cfg_;
  std::unique_ptr<ModelRole> actor_, critic_, reference_, reward_;
  std::unique_ptr<PipelineExecutor> actor_pipe_, critic_pipe_, reference_pipe_, reward_pipe_;
};

PpoJob::PpoJob(const RunConfig& cfg, const ParallelGrid& grid, bool quiet)
    : cfg_(cfg), grid_(grid), quiet_(quiet), lead_(grid.world_rank() == 0) {
  const auto& tc = cfg_.train;
  cfg_.model.head_chunk_rows = 0;  // the actor's loss reads every response row's logits (the entropy)
  FF_CHECK(!tc.init_from.empty(), "PPO starts the actor from an SFT model: give train.init_from");
  FF_CHECK(!tc.reward_model.empty(), "PPO scores rollouts with a reward model: give train.reward_model (a value head, "
           "e.g. from fivefold align rm)");
  const int64_t per_step = grid.dp_size() * tc.micro_batch * tc.grad_accum;
  FF_CHECK(tc.ppo_rollout_prompts % per_step == 0, "train.ppo_rollout_prompts = %lld must be a multiple of "
           "data-parallel %lld x micro_batch %lld x grad_accum %lld (the rollouts are trained on in whole steps)",
           (long long)tc.ppo_rollout_prompts, (long long)grid.dp_size(), (long long)tc.micro_batch,
           (long long)tc.grad_accum);
  reporter_ = grid.pp().rank() == grid.pp().size() - 1 && grid.tp().rank() == 0 && grid.cp().rank() == 0;
  tok_ = load_tokenizer(tc.tokenizer_type, tc.tokenizer_path);
  prompts_ = read_prompts(cfg_, *tok_, lead_ && !quiet);
  // The actor, and the reference: a frozen copy, or under LoRA the actor's base.
  actor_ = std::make_unique<ModelRole>("model", cfg_.model, cfg_.optim, grid, tc.seed, parse_name_globs(tc.freeze));
  if (tc.resume.empty()) load_model_source(open_model_source(tc.init_from), actor_->model(), parse_name_globs(tc.init_new));
  if (cfg_.model.lora_rank == 0 || !tc.reference.empty()) {
    const std::string path = tc.reference.empty() ? tc.init_from : tc.reference;
    const ModelSource src = open_model_source(path);
    ModelConfig rc = role_config(src, cfg_, "reference", tc.reference.empty() ? "init_from" : "reference");
    rc.lora_rank = 0;
    reference_ = std::make_unique<ModelRole>("reference", rc, grid, tc.seed);
    load_model_source(src, reference_->model());
    reference_pipe_ = std::make_unique<PipelineExecutor>(reference_->model(), grid, 1);
  }
  const ModelSource rm = open_model_source(tc.reward_model);
  const ModelConfig rc = role_config(rm, cfg_, "reward model", "reward_model");
  FF_CHECK(rc.head == HeadKind::value && rc.value_outputs == 1, "train.reward_model '%s' has no single-value head "
           "(model.head = value, value_outputs = 1): train one with fivefold align rm", tc.reward_model.c_str());
  reward_ = std::make_unique<ModelRole>("reward", rc, grid, tc.seed);
  load_model_source(rm, reward_->model());
  // The critic: a value per row, from the reward model (or any model: a fresh value head then).
  const std::string critic_path = tc.critic_init.empty() ? tc.reward_model : tc.critic_init;
  const ModelSource cs = open_model_source(critic_path);
  critic_cfg_ = role_config(cs, cfg_, "critic", tc.critic_init.empty() ? "reward_model" : "critic_init");
  const bool fresh_head = critic_cfg_.head != HeadKind::value;
  critic_cfg_.head = HeadKind::value;
  critic_cfg_.value_outputs = 1;
  critic_ = std::make_unique<ModelRole>("critic", critic_cfg_, critic_optimizer(cfg_), grid, tc.seed);
  if (tc.resume.empty())
    load_model_source(cs, critic_->model(), fresh_head ? std::vector<std::string>{"score.weight"} : std::vector<std::string>{});
  actor_pipe_ = std::make_unique<PipelineExecutor>(actor_->model(), grid, tc.grad_accum);
  critic_pipe_ = std::make_unique<PipelineExecutor>(critic_->model(), grid, tc.grad_accum);
  reward_pipe_ = std::make_unique<PipelineExecutor>(reward_->model(), grid, 1);
}

void PpoJob::score(const Rollouts& ro, std::vector<std::vector<float>>& logp, std::vector<std::vector<float>>& ref,
                   std::vector<std::vector<float>>& values, std::vector<std::vector<float>>& rm) {
  // Forward only, one micro-batch at a time through each model's stages; the rows land on the
  // last stage (zeros elsewhere, where nothing reads them).
  const int64_t M = ro.micro_batches(), n = ro.B * ro.S;
  for (auto* v : {&logp, &ref, &values, &rm}) v->assign(static_cast<size_t>(M), std::vector<float>(static_cast<size_t>(n), 0.0f));
  for (int64_t m = 0; m < M; ++m) {
    const auto& tk = ro.tokens[static_cast<size_t>(m)];
    const auto& tg = ro.targets[static_cast<size_t>(m)];
    actor_pipe_->evaluate(tk, tg, ro.B, ro.S, RowValues(logp[static_cast<size_t>(m)]));
    if (reference_pipe_) {
      reference_pipe_->evaluate(tk, tg, ro.B, ro.S, RowValues(ref[static_cast<size_t>(m)]));
    } else {  // the LoRA actor's base
      actor_->model().set_adapters(false);
      actor_pipe_->evaluate(tk, tg, ro.B, ro.S, RowValues(ref[static_cast<size_t>(m)]));
      actor_->model().set_adapters(true);
    }
    critic_pipe_->evaluate(tk, tg, ro.B, ro.S, RowValues(values[static_cast<size_t>(m)]));
    reward_pipe_->evaluate(tk, tg, ro.B, ro.S, RowValues(rm[static_cast<size_t>(m)]));
  }
}

IterationMetrics PpoJob::iteration(int64_t it) {
  const auto& tc = cfg_.train;
  const int64_t Rg = tc.ppo_rollout_prompts, DP = grid_.dp_size(), B = tc.micro_batch,
                S = cfg_.model.seq_len, GA = tc.grad_accum, Np = static_cast<int64_t>(prompts_.size());
  IterationMetrics mt;
  // 1. Rollouts: the whole batch on every replica, each keeping its share.
  auto t0 = Clock::now();
  std::vector<std::vector<int32_t>> batch;
  for (int64_t i = 0; i < Rg; ++i) batch.push_back(prompts_[static_cast<size_t>((it * Rg + i) % Np)]);
  SamplingOptions so;
  so.max_new_tokens = tc.ppo_max_new_tokens;
  so.temperature = tc.ppo_temperature;
  so.top_k = tc.ppo_top_k;
  so.top_p = tc.ppo_top_p;
  so.seed = tc.seed * 1000003 + static_cast<uint64_t>(it) + 1;
  GenerationStats gs;
  const std::vector<Generated> generated = generate(actor_->model(), grid_, *tok_, batch, so, &gs);
  const Rollouts ro =
      pack_rollouts(batch, generated, replica_sequences(Rg, DP, grid_.dp().rank(), GA * B), B, S, tok_->eod());
  mt.rollout_s = seconds_since(t0);
  mt.generated_tokens_per_s = mt.rollout_s > 0 ? static_cast<double>(gs.new_tokens) / mt.rollout_s : 0.0;
  // 2. Scores.
  t0 = Clock::now();
  std::vector<std::vector<float>> logp, ref, values, rm;
  score(ro, logp, ref, values, rm);
  mt.score_s = seconds_since(t0);
  // 3. Rewards, GAE, whitening. The masks are known on every rank; the rest is real on the last stage.
  const int64_t M = ro.micro_batches();
  std::vector<std::vector<float>> adv(static_cast<size_t>(M)), ret(adv.size()), mask(adv.size()), actor_mask(adv.size());
  double sums[4] = {0, 0, 0, 0};  // reward, kl, length, ended (reporter ranks)
  std::vector<float> rewards(static_cast<size_t>(S));
  for (int64_t m = 0; m < M; ++m) {
    const size_t mi = static_cast<size_t>(m);
    adv[mi].assign(static_cast<size_t>(B * S), 0.0f);
    ret[mi] = mask[mi] = actor_mask[mi] = adv[mi];
    for (int64_t b = 0; b < B; ++b) {
      const ResponseSpan sp = ro.spans[mi][static_cast<size_t>(b)];
      const int64_t o = b * S;
      const double score_value = sp.end > sp.first ? rm[mi][static_cast<size_t>(o + sp.end - 1)] : 0.0;
      kl_penalized_rewards(rewards.data(), logp[mi].data() + o, ref[mi].data() + o, sp, S, score_value, tc.ppo_kl_beta,
                           tc.ppo_absolute_kl);
      generalized_advantages(adv[mi].data() + o, ret[mi].data() + o, rewards.data(), values[mi].data() + o, sp, S,
                             tc.ppo_gamma, tc.ppo_lambda);
      const bool ended = ro.ended[mi][static_cast<size_t>(b)] != 0, learn = ended || !tc.ppo_only_ended;
      double kl = 0;
      for (int64_t t = sp.first; t < sp.end; ++t) {
        mask[mi][static_cast<size_t>(o + t)] = 1.0f;
        actor_mask[mi][static_cast<size_t>(o + t)] = learn ? 1.0f : 0.0f;
        kl += double(logp[mi][static_cast<size_t>(o + t)]) - ref[mi][static_cast<size_t>(o + t)];
      }
      if (reporter_) {
        sums[0] += score_value;
        sums[1] += kl;
        sums[2] += static_cast<double>(sp.end - sp.first);
        sums[3] += ended;
      }
    }
  }
  grid_.all().all_reduce_sum(sums, 4);
  mt.reward = sums[0] / Rg;
  mt.kl = sums[1] / Rg;
  mt.length = sums[2] / Rg;
  mt.ended = sums[3] / Rg;
  const MaskedMoments mo = whiten_advantages(adv, mask, grid_.dp());
  double moments[2] = {reporter_ && grid_.dp().rank() == 0 ? mo.mean : 0.0,
                       reporter_ && grid_.dp().rank() == 0 ? std::sqrt(mo.variance) : 0.0};
  grid_.all().all_reduce_sum(moments, 2);  // one reporter's figures (every replica has the same)
  mt.advantage_mean = moments[0];
  mt.advantage_std = moments[1];
  // 4. One pass over the rollouts, GA micro-batches per optimizer step.
  t0 = Clock::now();
  const int64_t steps = M / GA, total = tc.steps;
  const bool train_actor = it >= tc.ppo_critic_warmup;
  mt.lr = train_actor ? learning_rate(cfg_.optim, it - tc.ppo_critic_warmup, total - tc.ppo_critic_warmup) : 0.0;
  mt.critic_lr = learning_rate(critic_optimizer(cfg_), it, total);
  PpoLossStats actor_stats, critic_stats;
  for (int64_t j = 0; j < steps; ++j) {
    std::vector<std::vector<int32_t>> tk, tg;
    std::vector<PpoRows> actor_rows, critic_rows;
    double counts[2] = {0, 0};  // the step's masked rows: actor, critic
    for (int64_t m = j * GA; m < (j + 1) * GA; ++m) {
      const size_t mi = static_cast<size_t>(m);
      tk.push_back(ro.tokens[mi]);
      tg.push_back(ro.targets[mi]);
      actor_rows.push_back({logp[mi], adv[mi], actor_mask[mi]});
      critic_rows.push_back({values[mi], ret[mi], mask[mi]});
      for (size_t i = 0; i < mask[mi].size(); ++i) counts[0] += actor_mask[mi][i], counts[1] += mask[mi][i];
    }
    grid_.dp().all_reduce_sum(counts, 2);
    double losses[2] = {0, 0};
    critic_->model().params().zero_grads();
    const PpoCriticLoss critic_loss(critic_rows, counts[1], tc.ppo_value_clip);
    losses[1] = critic_pipe_->run(tk, tg, B, S, critic_loss).loss;
    mt.critic_grad_norm = critic_->optimizer_step(mt.critic_lr);
    critic_stats.add(critic_loss.stats());
    if (train_actor && counts[0] > 0) {  // no ended sequence in the step: nothing to learn from
      actor_->model().params().zero_grads();
      const PpoActorLoss actor_loss(actor_rows, counts[0], tc.ppo_clip, tc.ppo_entropy_coeff);
      losses[0] = actor_pipe_->run(tk, tg, B, S, actor_loss).loss;
      mt.actor_grad_norm = actor_->optimizer_step(mt.lr);
      actor_stats.add(actor_loss.stats());
    }
    grid_.dp().all_reduce_sum(losses, 2);  // the replicas' shares of each step's masked mean
    mt.actor_loss += losses[0] / static_cast<double>(steps);
    mt.critic_loss += losses[1] / static_cast<double>(steps);
  }
  // The losses' statistics, counted once per replica (the last stage's first TP rank; CP-complete).
  double st[6] = {0, 0, 0, 0, 0, 0};
  if (reporter_) {
    st[0] = actor_stats.rows;
    st[1] = actor_stats.clipped;
    st[2] = actor_stats.ratio;
    st[3] = critic_stats.rows;
    st[4] = critic_stats.clipped;
    st[5] = actor_stats.entropy;
  }
  grid_.all().all_reduce_sum(st, 6);
  mt.actor_clip = st[0] > 0 ? st[1] / st[0] : 0.0;
  mt.ratio = st[0] > 0 ? st[2] / st[0] : 0.0;
  mt.entropy = st[0] > 0 ? st[5] / st[0] : 0.0;
  mt.critic_clip = st[3] > 0 ? st[4] / st[3] : 0.0;
  mt.train_s = seconds_since(t0);
  return mt;
}

void PpoJob::write_models(int64_t iterations, const DataCursor& cursor, RunCheckpoint& ckpt) {
  const auto& tc = cfg_.train;
  const TokenizerFile tokenizer = run_tokenizer_file(cfg_);
  RunConfig critic_run = cfg_;
  critic_run.model = critic_cfg_;
  const std::string actor_path = tc.out_dir + "/model.safetensors", critic_path = tc.out_dir + "/critic.safetensors";
  if (grid_.world_size() == 1) {
    save_model(actor_->model(), cfg_, actor_path, &tokenizer);
    save_model(critic_->model(), critic_run, critic_path, &tokenizer);
  } else {  // every rank writes its slices; the lead assembles the whole models
    const std::string dir = ckpt.save(iterations, cursor);
    if (lead_) {
      save_model_from_checkpoint(dir, cfg_, actor_path, &tokenizer, "model");
      save_model_from_checkpoint(dir, critic_run, critic_path, &tokenizer, "critic");
    }
    grid_.all().barrier();
  }
  if (lead_ && !quiet_) std::printf("saved the actor %s and the critic %s\n", actor_path.c_str(), critic_path.c_str());
}

void PpoJob::run() {
  const auto& tc = cfg_.train;
  std::filesystem::create_directories(tc.out_dir);
  std::unique_ptr<FileLock> lock;
  if (lead_) {
    lock = std::make_unique<FileLock>(tc.out_dir + "/.fivefold.lock", "out_dir " + tc.out_dir);
    move_earlier_run_aside(tc, quiet_);
  }
  grid_.all().barrier();
  RunCheckpoint ckpt(cfg_, {actor_.get(), critic_.get()}, grid_);
  ckpt.show_progress(!quiet_ && stderr_is_terminal());
  StopSignalGuard stop_guard;
  SampleCursor cursor;  // the prompts consumed (they, and the sampling seeds, follow from the iteration)
  cursor.data = tc.data_path;
  int64_t start = 0;
  if (!tc.resume.empty()) {
    const TrainingState st = ckpt.resume();
    cursor.load_cursor(st.data_cursor);
    start = st.step;
    if (lead_) truncate_metrics(tc.out_dir + "/metrics.jsonl", start);
  }
  std::unique_ptr<AppendFile> metrics;
  if (lead_) metrics = std::make_unique<AppendFile>(tc.out_dir + "/metrics.jsonl", /*truncate=*/start == 0);
  if (lead_ && !quiet_)
    std::printf("PPO: %lld iterations of %lld rollouts (at most %lld new tokens), %zu prompts; actor %s, reward model "
                "%s, critic from %s, reference %s\n", (long long)tc.steps, (long long)tc.ppo_rollout_prompts,
                (long long)tc.ppo_max_new_tokens, prompts_.size(), tc.init_from.c_str(), tc.reward_model.c_str(),
                (tc.critic_init.empty() ? tc.reward_model : tc.critic_init).c_str(),
                reference_ ? "a frozen copy of the initial actor" : "the actor with its LoRA adapters off");
  for (int64_t it = start; it < tc.steps; ++it) {
    const IterationMetrics m = iteration(it);
    cursor.next_sample = (it + 1) * tc.ppo_rollout_prompts;
    if (lead_) {
      metrics->write_line(nlohmann::json{
          {"step", it + 1}, {"reward", m.reward}, {"kl", m.kl}, {"response_length", m.length}, {"ended", m.ended},
          {"entropy", m.entropy}, {"actor_loss", m.actor_loss}, {"critic_loss", m.critic_loss},
          {"actor_clip_fraction", m.actor_clip}, {"critic_clip_fraction", m.critic_clip}, {"ratio", m.ratio},
          {"advantage_mean", m.advantage_mean}, {"advantage_std", m.advantage_std},
          {"actor_grad_norm", m.actor_grad_norm}, {"critic_grad_norm", m.critic_grad_norm}, {"lr", m.lr},
          {"critic_lr", m.critic_lr}, {"rollout_s", m.rollout_s}, {"score_s", m.score_s}, {"train_s", m.train_s},
          {"generated_tokens_per_s", m.generated_tokens_per_s}}.dump());
      if (!quiet_)
        std::printf("ppo %4lld/%lld | reward %.4f | kl %.4f | len %.1f | ended %.2f | entropy %.3f | actor %.4f "
                    "clip %.3f | critic %.4f clip %.3f | rollout %.2fs score %.2fs train %.2fs | %.0f gen tok/s\n",
                    (long long)(it + 1), (long long)tc.steps, m.reward, m.kl, m.length, m.ended, m.entropy,
                    m.actor_loss, m.actor_clip, m.critic_loss, m.critic_clip, m.rollout_s, m.score_s, m.train_s,
                    m.generated_tokens_per_s);
      std::fflush(stdout);
    }
    const bool stop = ckpt.stop_agreed();
    if (ckpt.due(it + 1) || stop) {
      const std::string dir = ckpt.save(it + 1, cursor);
      if (lead_ && !quiet_) std::printf("saved checkpoint %s\n", dir.c_str());
    }
    if (stop) {
      if (lead_) std::printf("stopped by a signal after iteration %lld; continue with --resume %s\n",
                             (long long)(it + 1), ckpt.save_dir().c_str());
      return;
    }
  }
  write_models(tc.steps, cursor, ckpt);
}

}  // namespace

void run_ppo(const RunConfig& cfg, const ParallelGrid& grid, bool quiet) {
  PpoJob job(cfg, grid, quiet);
  job.run();
}

}  // namespace ff
