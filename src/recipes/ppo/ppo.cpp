#include "recipes/ppo/ppo.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/file_lock.h"
#include "io/jsonl.h"
#include "io/progress.h"
#include "recipes/ppo/ppo_objective.h"
#include "recipes/ppo/ppo_placement.h"
#include "recipes/ppo/rollout_share.h"
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

// A model source's config for a role of this job: the run's precision, the layout of the ranks
// that hold it checked.
ModelConfig role_config(const ModelSource& src, const RunConfig& cfg, const ParallelConfig& layout,
                        const char* layout_name, const char* role, const std::string& field) {
  ModelConfig c = src.config.model;
  c.precision = cfg.model.precision;
  c.head_chunk_rows = 0;
  FF_CHECK(c.vocab_size == cfg.model.vocab_size, "train.%s '%s' has model.vocab_size = %lld, the actor %lld: PPO's "
           "models score the same tokens", field.c_str(), src.path.c_str(), (long long)c.vocab_size,
           (long long)cfg.model.vocab_size);
  const auto problems = layout_problems(c, layout);
  if (!problems.empty())
    throw UserError(strprintf("the %s (train.%s '%s') cannot run on the layout of its ranks (%s): %s", role,
                              field.c_str(), src.path.c_str(), layout_name, problems[0].c_str()));
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
  double lr = 0, critic_lr = 0, generated_tokens_per_s = 0;
  bool actor_learned = false;  // the actor's loss saw rows (not during the critic warm-up, nor when none ended)
  // Phases as world rank 0 saw them (rollouts, scores complete, training to the iteration's end),
  // and the busy time of each group (the same ranks when shared).
  double rollout_s = 0, score_s = 0, train_s = 0, iteration_s = 0;
  double actor_score_s = 0, actor_train_s = 0, critic_score_s = 0, critic_train_s = 0;
};

// One model's pass over its group's rollouts, GA micro-batches per optimizer step.
struct TrainOutcome {
  double loss = 0, grad_norm = 0;  // the mean over the steps of the masked mean (summed over replicas)
  PpoLossStats stats;
};

class PpoJob {
 public:
  PpoJob(const RunConfig& cfg, const Communicator& world, bool quiet);
  void run();

 private:
  IterationMetrics iteration(int64_t it);
  void generate_rollouts(int64_t it, const std::vector<std::vector<int32_t>>& batch, std::vector<Generated>& generated,
                         SideRollouts& critic_side, RolloutScores& sc, IterationMetrics& mt);
  SideRollouts pack_side(const std::vector<std::vector<int32_t>>& batch, const std::vector<Generated>& generated,
                         bool critic, int64_t first, int64_t count) const;
  void score_actor(const SideRollouts& side, RolloutScores& sc);
  void score_critic(const SideRollouts& side, int64_t first_micro_batch, RolloutScores& sc);
  TrainOutcome train_critic(const SideRollouts& side, const LossRows& rows, double lr);
  TrainOutcome train_actor(const SideRollouts& side, const LossRows& rows, double lr);
  void batch_metrics(const std::vector<std::vector<int32_t>>& batch, const std::vector<Generated>& generated,
                     const RolloutScores& sc, IterationMetrics& mt) const;
  void write_models(int64_t iterations, const DataCursor& cursor, RunCheckpoint& ckpt);
  bool reporter() const;  // the last stage's first TP and CP rank of a replica of this rank's group
  int64_t critic_grad_accum() const { return cfg_.train.grad_accum * place_.actor_dp() / place_.critic_dp(); }

  RunConfig cfg_;
  PpoPlacement place_;
  bool quiet_, lead_;
  std::unique_ptr<Tokenizer> tok_;
  std::vector<std::vector<int32_t>> prompts_;
  ModelConfig critic_cfg_;
  std::unique_ptr<ModelRole> actor_, critic_, reference_, reward_;  // each only on the ranks of its group
  std::unique_ptr<PipelineExecutor> actor_pipe_, critic_pipe_, reference_pipe_, reward_pipe_;
};

PpoJob::PpoJob(const RunConfig& cfg, const Communicator& world, bool quiet)
    : cfg_(cfg), place_(cfg, world), quiet_(quiet), lead_(world.rank() == 0) {
  const auto& tc = cfg_.train;
  const ParallelGrid& grid = place_.grid();
  cfg_.model.head_chunk_rows = 0;  // the actor's loss reads every response row's logits (the entropy)
  FF_CHECK(!tc.init_from.empty(), "PPO starts the actor from an SFT model: give train.init_from");
  FF_CHECK(!tc.reward_model.empty(), "PPO scores rollouts with a reward model: give train.reward_model (a value head, "
           "e.g. from fivefold align rm)");
  const int64_t per_step = place_.actor_dp() * tc.micro_batch * tc.grad_accum;
  FF_CHECK(tc.ppo_rollout_prompts % per_step == 0, "train.ppo_rollout_prompts = %lld must be a multiple of "
           "data-parallel %lld x micro_batch %lld x grad_accum %lld (the rollouts are trained on in whole steps)",
           (long long)tc.ppo_rollout_prompts, (long long)place_.actor_dp(), (long long)tc.micro_batch,
           (long long)tc.grad_accum);
  FF_CHECK(place_.actor_dp() * tc.grad_accum % place_.critic_dp() == 0, "the critic's %lld data-parallel replicas "
           "cannot split an optimizer step of the actor's %lld replicas x train.grad_accum %lld micro-batches evenly: "
           "give the critic's ranks (train.ppo_critic_ranks / (ppo_critic_tp x ppo_critic_pp)) a divisor of that",
           (long long)place_.critic_dp(), (long long)place_.actor_dp(), (long long)tc.grad_accum);
  tok_ = load_tokenizer(tc.tokenizer_type, tc.tokenizer_path);
  prompts_ = read_prompts(cfg_, *tok_, lead_ && !quiet);
  const ParallelConfig critic_layout = place_.split() ? cfg_.ppo_critic_layout() : cfg_.parallel;
  const char* critic_layout_name = place_.split() ? "train.ppo_critic_tp, ppo_critic_pp" : "parallel.*, shared with the actor";
  // The critic's config is known everywhere (the lead writes its model file); a value per row,
  // from the reward model (or any model: a fresh value head then).
  const std::string critic_path = tc.critic_init.empty() ? tc.reward_model : tc.critic_init;
  const ModelSource cs = open_model_source(critic_path);
  critic_cfg_ = role_config(cs, cfg_, critic_layout, critic_layout_name, "critic", tc.critic_init.empty() ? "reward_model" : "critic_init");
  const bool fresh_head = critic_cfg_.head != HeadKind::value;
  critic_cfg_.head = HeadKind::value;
  critic_cfg_.value_outputs = 1;
  if (place_.actor_side()) {  // the actor, and the reference: a frozen copy, or under LoRA the actor's base
    actor_ = std::make_unique<ModelRole>("model", cfg_.model, cfg_.optim, grid, tc.seed, parse_name_globs(tc.freeze));
    if (tc.resume.empty())
      load_model_source(open_model_source(tc.init_from), actor_->model(), parse_name_globs(tc.init_new));
    if (cfg_.model.lora_rank == 0 || !tc.reference.empty()) {
      const std::string path = tc.reference.empty() ? tc.init_from : tc.reference;
      const ModelSource src = open_model_source(path);
      ModelConfig rc = role_config(src, cfg_, cfg_.parallel, "parallel.*, the actor's", "reference", tc.reference.empty() ? "init_from" : "reference");
      rc.lora_rank = 0;
      reference_ = std::make_unique<ModelRole>("reference", rc, grid, tc.seed);
      load_model_source(src, reference_->model());
      reference_pipe_ = std::make_unique<PipelineExecutor>(reference_->model(), grid, 1);
    }
    actor_pipe_ = std::make_unique<PipelineExecutor>(actor_->model(), grid, tc.grad_accum);
  }
  if (place_.critic_side()) {
    const ModelSource rm = open_model_source(tc.reward_model);
    const ModelConfig rc = role_config(rm, cfg_, critic_layout, critic_layout_name, "reward model", "reward_model");
    FF_CHECK(rc.head == HeadKind::value && rc.value_outputs == 1, "train.reward_model '%s' has no single-value head "
             "(model.head = value, value_outputs = 1): train one with fivefold align rm", tc.reward_model.c_str());
    reward_ = std::make_unique<ModelRole>("reward", rc, grid, tc.seed);
    load_model_source(rm, reward_->model());
    critic_ = std::make_unique<ModelRole>("critic", critic_cfg_, critic_optimizer(cfg_), grid, tc.seed);
    if (tc.resume.empty())
      load_model_source(cs, critic_->model(), fresh_head ? std::vector<std::string>{"score.weight"} : std::vector<std::string>{});
    critic_pipe_ = std::make_unique<PipelineExecutor>(critic_->model(), grid, critic_grad_accum());
    reward_pipe_ = std::make_unique<PipelineExecutor>(reward_->model(), grid, 1);
  }
}

bool PpoJob::reporter() const {
  const ParallelGrid& g = place_.grid();
  return g.pp().rank() == g.pp().size() - 1 && g.tp().rank() == 0 && g.cp().rank() == 0;
}

SideRollouts PpoJob::pack_side(const std::vector<std::vector<int32_t>>& batch, const std::vector<Generated>& generated,
                               bool critic, int64_t first, int64_t count) const {
  const auto& tc = cfg_.train;
  const int64_t per_replica = (critic ? critic_grad_accum() : tc.grad_accum) * tc.micro_batch;
  const int64_t dp = critic ? place_.critic_dp() : place_.actor_dp();
  std::vector<int64_t> which;
  for (int64_t i : replica_sequences(tc.ppo_rollout_prompts, dp, place_.grid().dp().rank(), per_replica))
    if (i >= first && i < first + count) which.push_back(i);
  SideRollouts side;
  side.append(pack_rollouts(batch, generated, which, tc.micro_batch, cfg_.model.seq_len, tok_->eod()), which);
  return side;
}

// Forward only, one micro-batch at a time through each model's stages; the rows land on the last
// stage, and its reporter copies them into every sequence's rows.
void PpoJob::score_actor(const SideRollouts& side, RolloutScores& sc) {
  const Rollouts& ro = side.ro;
  const int64_t B = ro.B, S = ro.S;
  std::vector<float> logp, ref;
  for (int64_t m = 0; m < ro.micro_batches(); ++m) {
    const auto& tk = ro.tokens[static_cast<size_t>(m)];
    const auto& tg = ro.targets[static_cast<size_t>(m)];
    actor_pipe_->evaluate(tk, tg, B, S, RowValues(logp));
    if (reference_pipe_) {
      reference_pipe_->evaluate(tk, tg, B, S, RowValues(ref));
    } else {  // the LoRA actor's base
      actor_->model().set_adapters(false);
      actor_pipe_->evaluate(tk, tg, B, S, RowValues(ref));
      actor_->model().set_adapters(true);
    }
    if (!reporter()) continue;
    for (int64_t b = 0; b < B; ++b) {
      const size_t g = static_cast<size_t>(side.which[static_cast<size_t>(m * B + b)] * S), o = static_cast<size_t>(b * S);
      std::copy(logp.begin() + o, logp.begin() + o + S, sc.logp.begin() + g);
      std::copy(ref.begin() + o, ref.begin() + o + S, sc.ref.begin() + g);
    }
  }
}

// The same for the critic's values and the reward model's score (its value at the last response
// row), for the micro-batches from first_micro_batch on.
void PpoJob::score_critic(const SideRollouts& side, int64_t first_micro_batch, RolloutScores& sc) {
  const Rollouts& ro = side.ro;
  const int64_t B = ro.B, S = ro.S;
  std::vector<float> values, rm;
  for (int64_t m = first_micro_batch; m < ro.micro_batches(); ++m) {
    const auto& tk = ro.tokens[static_cast<size_t>(m)];
    const auto& tg = ro.targets[static_cast<size_t>(m)];
    critic_pipe_->evaluate(tk, tg, B, S, RowValues(values));
    reward_pipe_->evaluate(tk, tg, B, S, RowValues(rm));
    if (!reporter()) continue;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t i = side.which[static_cast<size_t>(m * B + b)];
      const size_t g = static_cast<size_t>(i * S), o = static_cast<size_t>(b * S);
      std::copy(values.begin() + o, values.begin() + o + S, sc.values.begin() + g);
      const ResponseSpan sp = ro.spans[static_cast<size_t>(m)][static_cast<size_t>(b)];
      sc.score[static_cast<size_t>(i)] = sp.end > sp.first ? rm[o + static_cast<size_t>(sp.end - 1)] : 0.0f;
    }
  }
}

// Step 1: the actor decodes the batch; split, chunk by chunk (one optimizer step of sequences
// each), every chunk handed to the critic's ranks, which score it while the next is decoded.
void PpoJob::generate_rollouts(int64_t it, const std::vector<std::vector<int32_t>>& batch,
                               std::vector<Generated>& generated, SideRollouts& critic_side, RolloutScores& sc,
                               IterationMetrics& mt) {
  const auto& tc = cfg_.train;
  const int64_t R = tc.ppo_rollout_prompts;
  const int64_t chunk = place_.split() ? place_.actor_dp() * tc.grad_accum * tc.micro_batch : R;
  SamplingOptions so;
  so.max_new_tokens = tc.ppo_max_new_tokens;
  so.temperature = tc.ppo_temperature;
  so.top_k = tc.ppo_top_k;
  so.top_p = tc.ppo_top_p;
  so.seed = tc.seed * 1000003 + static_cast<uint64_t>(it) + 1;
  generated.assign(static_cast<size_t>(R), Generated{});
  int64_t new_tokens = 0;
  double generate_s = 0;
  for (int64_t first = 0; first < R; first += chunk) {
    if (place_.actor_side()) {
      const auto t0 = Clock::now();
      const std::vector<std::vector<int32_t>> part(batch.begin() + first, batch.begin() + first + chunk);
      so.first_stream = static_cast<uint64_t>(first);  // the streams of the whole batch
      GenerationStats gs;
      std::vector<Generated> g = generate(actor_->model(), place_.grid(), *tok_, part, so, &gs);
      std::move(g.begin(), g.end(), generated.begin() + first);
      new_tokens += gs.new_tokens;
      generate_s += seconds_since(t0);
    }
    place_.share_rollouts(generated, first, chunk);
    if (place_.split() && place_.critic_side()) {
      const auto t0 = Clock::now();
      const int64_t done = critic_side.ro.micro_batches();
      SideRollouts part = pack_side(batch, generated, true, first, chunk);
      critic_side.append(std::move(part.ro), part.which);
      score_critic(critic_side, done, sc);
      mt.critic_score_s += seconds_since(t0);
    }
  }
  mt.generated_tokens_per_s = generate_s > 0 ? static_cast<double>(new_tokens) / generate_s : 0.0;
}

void PpoJob::batch_metrics(const std::vector<std::vector<int32_t>>& batch, const std::vector<Generated>& generated,
                           const RolloutScores& sc, IterationMetrics& mt) const {
  const int64_t R = cfg_.train.ppo_rollout_prompts, S = cfg_.model.seq_len;
  for (int64_t i = 0; i < R; ++i) {
    const Generated& g = generated[static_cast<size_t>(i)];
    const bool eos = g.finish == "eos";
    const int64_t first = static_cast<int64_t>(batch[static_cast<size_t>(i)].size()) - 1;
    const int64_t end = first + static_cast<int64_t>(g.tokens.size()) + (eos ? 1 : 0);
    mt.reward += sc.score[static_cast<size_t>(i)];
    for (int64_t t = first; t < end; ++t)
      mt.kl += double(sc.logp[static_cast<size_t>(i * S + t)]) - sc.ref[static_cast<size_t>(i * S + t)];
    mt.length += static_cast<double>(end - first);
    mt.ended += eos;
  }
  for (double* v : {&mt.reward, &mt.kl, &mt.length, &mt.ended}) *v /= static_cast<double>(R);
}

TrainOutcome PpoJob::train_critic(const SideRollouts& side, const LossRows& rows, double lr) {
  const auto& tc = cfg_.train;
  const int64_t GA = critic_grad_accum(), B = side.ro.B, S = side.ro.S, steps = side.ro.micro_batches() / GA;
  TrainOutcome out;
  for (int64_t j = 0; j < steps; ++j) {
    StepBatch sb = step_batch(side, j, GA, rows.values, rows.ret, rows.mask);
    place_.grid().dp().all_reduce_sum(&sb.masked, 1);  // the step's masked rows over the replicas
    critic_->model().params().zero_grads();
    const PpoCriticLoss loss(sb.rows, sb.masked, tc.ppo_value_clip);
    out.loss += critic_pipe_->run(sb.tokens, sb.targets, B, S, loss).loss / static_cast<double>(steps);
    out.grad_norm = critic_->optimizer_step(lr);
    out.stats.add(loss.stats());
  }
  place_.grid().dp().all_reduce_sum(&out.loss, 1);  // the replicas' shares of each step's masked mean
  return out;
}

TrainOutcome PpoJob::train_actor(const SideRollouts& side, const LossRows& rows, double lr) {
  const auto& tc = cfg_.train;
  const int64_t GA = tc.grad_accum, B = side.ro.B, S = side.ro.S, steps = side.ro.micro_batches() / GA;
  TrainOutcome out;
  for (int64_t j = 0; j < steps; ++j) {
    StepBatch sb = step_batch(side, j, GA, rows.logp, rows.adv, rows.actor_mask);
    place_.grid().dp().all_reduce_sum(&sb.masked, 1);
    if (sb.masked == 0) continue;  // no ended sequence in the step: nothing to learn from
    actor_->model().params().zero_grads();
    const PpoActorLoss loss(sb.rows, sb.masked, tc.ppo_clip, tc.ppo_entropy_coeff);
    out.loss += actor_pipe_->run(sb.tokens, sb.targets, B, S, loss).loss / static_cast<double>(steps);
    out.grad_norm = actor_->optimizer_step(lr);
    out.stats.add(loss.stats());
  }
  place_.grid().dp().all_reduce_sum(&out.loss, 1);
  return out;
}

IterationMetrics PpoJob::iteration(int64_t it) {
  const auto& tc = cfg_.train;
  const int64_t R = tc.ppo_rollout_prompts, S = cfg_.model.seq_len, Np = static_cast<int64_t>(prompts_.size());
  IterationMetrics mt;
  const auto t_start = Clock::now();
  std::vector<std::vector<int32_t>> batch;
  for (int64_t i = 0; i < R; ++i) batch.push_back(prompts_[static_cast<size_t>((it * R + i) % Np)]);
  // 1. Rollouts (split: the critic's scores of each chunk beside them).
  RolloutScores sc;
  sc.reset(R, S);
  std::vector<Generated> generated;
  SideRollouts critic_side;
  generate_rollouts(it, batch, generated, critic_side, sc, mt);
  mt.rollout_s = seconds_since(t_start);
  // 2. Scores: the actor's and the reference's log-probs (shared: every model's), made whole.
  auto t0 = Clock::now();
  SideRollouts actor_side;
  if (place_.actor_side()) actor_side = pack_side(batch, generated, false, 0, R);
  if (!place_.split()) critic_side = actor_side;
  if (place_.actor_side()) score_actor(actor_side, sc);
  mt.actor_score_s = seconds_since(t0);
  if (!place_.split()) {
    const auto t1 = Clock::now();
    score_critic(critic_side, 0, sc);
    mt.critic_score_s = seconds_since(t1);
  }
  place_.complete_scores(sc);
  mt.score_s = seconds_since(t0);
  // 3. Rewards with the KL penalty, GAE; the actor's advantages whitened over its replicas.
  if (lead_) batch_metrics(batch, generated, sc, mt);  // only the lead writes them
  LossRows actor_rows, critic_rows;
  if (place_.actor_side()) {
    actor_rows = loss_rows(actor_side, sc, tc);
    const MaskedMoments mo = whiten_advantages(actor_rows.adv, actor_rows.mask, place_.grid().dp());
    mt.advantage_mean = mo.mean;
    mt.advantage_std = std::sqrt(mo.variance);
  }
  if (place_.critic_side()) critic_rows = place_.split() ? loss_rows(critic_side, sc, tc) : actor_rows;
  // 4. Each group trains its model over its rollouts (split: at the same time).
  t0 = Clock::now();
  const bool train_actor_now = it >= tc.ppo_critic_warmup;
  mt.lr = train_actor_now ? learning_rate(cfg_.optim, it - tc.ppo_critic_warmup, tc.steps - tc.ppo_critic_warmup) : 0.0;
  mt.critic_lr = learning_rate(critic_optimizer(cfg_), it, tc.steps);
  TrainOutcome actor, critic;
  if (place_.critic_side()) {
    const auto t1 = Clock::now();
    critic = train_critic(critic_side, critic_rows, mt.critic_lr);
    mt.critic_train_s = seconds_since(t1);
  }
  if (place_.actor_side() && train_actor_now) {
    const auto t1 = Clock::now();
    actor = train_actor(actor_side, actor_rows, mt.lr);
    mt.actor_train_s = seconds_since(t1);
  }
  // 5. The figures of both groups to world rank 0 (an actor rank: it has the batch metrics and
  // the advantages' moments itself): the losses from each group's first rank, the loss
  // statistics from its reporters (one per replica), the times from its first rank.
  const bool actor_first = place_.actor_side() && place_.grid().world_rank() == 0;
  const bool critic_first = place_.critic_side() && place_.grid().world_rank() == 0;
  const bool actor_reports = place_.actor_side() && reporter(), critic_reports = place_.critic_side() && reporter();
  double sums[10] = {actor_first ? actor.loss : 0.0, critic_first ? critic.loss : 0.0,
                     actor_reports ? actor.stats.rows : 0.0, actor_reports ? actor.stats.clipped : 0.0,
                     actor_reports ? actor.stats.ratio : 0.0, actor_reports ? actor.stats.entropy : 0.0,
                     critic_reports ? critic.stats.rows : 0.0, critic_reports ? critic.stats.clipped : 0.0,
                     critic_first ? mt.critic_score_s : 0.0, critic_first ? mt.critic_train_s : 0.0};
  place_.world().all_reduce_sum(sums, 10);
  double norms[2] = {actor.grad_norm, critic.grad_norm};
  place_.world().all_reduce_max(norms, 2);
  mt.actor_loss = sums[0];
  mt.critic_loss = sums[1];
  mt.actor_learned = sums[2] > 0;
  mt.actor_clip = sums[2] > 0 ? sums[3] / sums[2] : 0.0;
  mt.ratio = sums[2] > 0 ? sums[4] / sums[2] : 0.0;
  mt.entropy = sums[2] > 0 ? sums[5] / sums[2] : 0.0;
  mt.critic_clip = sums[6] > 0 ? sums[7] / sums[6] : 0.0;
  mt.critic_score_s = sums[8];
  mt.critic_train_s = sums[9];
  mt.actor_grad_norm = norms[0];
  mt.critic_grad_norm = norms[1];
  mt.train_s = seconds_since(t0);
  mt.iteration_s = seconds_since(t_start);
  return mt;
}

void PpoJob::write_models(int64_t iterations, const DataCursor& cursor, RunCheckpoint& ckpt) {
  const auto& tc = cfg_.train;
  const TokenizerFile tokenizer = run_tokenizer_file(cfg_);
  RunConfig critic_run = cfg_;
  critic_run.model = critic_cfg_;
  const std::string actor_path = tc.out_dir + "/model.safetensors", critic_path = tc.out_dir + "/critic.safetensors";
  if (place_.world().size() == 1) {
    save_model(actor_->model(), cfg_, actor_path, &tokenizer);
    save_model(critic_->model(), critic_run, critic_path, &tokenizer);
  } else {  // every rank writes its slices; the lead assembles the whole models
    const std::string dir = ckpt.save(iterations, cursor);
    if (lead_) {
      save_model_from_checkpoint(dir, cfg_, actor_path, &tokenizer, "model");
      save_model_from_checkpoint(dir, critic_run, critic_path, &tokenizer, "critic");
    }
    place_.world().barrier();
  }
  if (lead_ && !quiet_) std::printf("saved the actor %s and the critic %s\n", actor_path.c_str(), critic_path.c_str());
}

void PpoJob::run() {
  const auto& tc = cfg_.train;
  const Communicator& world = place_.world();
  std::filesystem::create_directories(tc.out_dir);
  std::unique_ptr<FileLock> lock;
  if (lead_) {
    lock = std::make_unique<FileLock>(tc.out_dir + "/.fivefold.lock", "out_dir " + tc.out_dir);
    move_earlier_run_aside(tc, quiet_);
  }
  world.barrier();
  RunCheckpoint ckpt(cfg_, {{"model", actor_.get()}, {"critic", critic_.get()}}, place_.grid(), world);
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
  if (lead_ && !quiet_) {
    std::printf("PPO: %lld iterations of %lld rollouts (at most %lld new tokens), %zu prompts; actor %s, reward model "
                "%s, critic from %s, reference %s\n", (long long)tc.steps, (long long)tc.ppo_rollout_prompts,
                (long long)tc.ppo_max_new_tokens, prompts_.size(), tc.init_from.c_str(), tc.reward_model.c_str(),
                (tc.critic_init.empty() ? tc.reward_model : tc.critic_init).c_str(),
                reference_ ? "a frozen copy of the initial actor" : "the actor with its LoRA adapters off");
    if (place_.split())
      std::printf("PPO placement: the actor and the reference on ranks 0..%lld (%lld-way data-parallel), the critic "
                  "and the reward model on ranks %lld..%d (%lld-way data-parallel, tp %lld, pp %lld)\n",
                  (long long)(cfg_.actor_world(world.size()) - 1), (long long)place_.actor_dp(),
                  (long long)cfg_.actor_world(world.size()), world.size() - 1, (long long)place_.critic_dp(),
                  (long long)tc.ppo_critic_tp, (long long)tc.ppo_critic_pp);
  }
  for (int64_t it = start; it < tc.steps; ++it) {
    const IterationMetrics m = iteration(it);
    cursor.next_sample = (it + 1) * tc.ppo_rollout_prompts;
    // The actor's loss statistics exist only when it learned this iteration: null otherwise.
    auto actor_stat = [&](double v) { return m.actor_learned ? nlohmann::json(v) : nlohmann::json(); };
    if (lead_) {
      metrics->write_line(nlohmann::json{
          {"step", it + 1}, {"reward", m.reward}, {"kl", m.kl}, {"response_length", m.length}, {"ended", m.ended},
          {"entropy", actor_stat(m.entropy)}, {"actor_loss", m.actor_loss}, {"critic_loss", m.critic_loss},
          {"actor_clip_fraction", actor_stat(m.actor_clip)}, {"critic_clip_fraction", m.critic_clip},
          {"ratio", actor_stat(m.ratio)},
          {"advantage_mean", m.advantage_mean}, {"advantage_std", m.advantage_std},
          {"actor_grad_norm", m.actor_grad_norm}, {"critic_grad_norm", m.critic_grad_norm}, {"lr", m.lr},
          {"critic_lr", m.critic_lr}, {"rollout_s", m.rollout_s}, {"score_s", m.score_s}, {"train_s", m.train_s},
          {"iteration_s", m.iteration_s}, {"actor_score_s", m.actor_score_s}, {"actor_train_s", m.actor_train_s},
          {"critic_score_s", m.critic_score_s}, {"critic_train_s", m.critic_train_s},
          {"generated_tokens_per_s", m.generated_tokens_per_s}}.dump());
      if (!quiet_)
        std::printf("ppo %4lld/%lld | reward %.4f | kl %.4f | len %.1f | ended %.2f | entropy %s | actor %.4f "
                    "clip %.3f | critic %.4f clip %.3f | rollout %.2fs score %.2fs train %.2fs | %.0f gen tok/s\n",
                    (long long)(it + 1), (long long)tc.steps, m.reward, m.kl, m.length, m.ended,
                    m.actor_learned ? strprintf("%.3f", m.entropy).c_str() : "-",
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

void run_ppo(const RunConfig& cfg, const Communicator& world, bool quiet) {
  PpoJob job(cfg, world, quiet);
  job.run();
}

}  // namespace ff
