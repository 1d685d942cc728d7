#include "train/trainer.h"

#include <omp.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/file_lock.h"
#include "io/progress.h"
#include "io/safetensors.h"
#include "io/tensorboard.h"
#include "train/console_log.h"
#include "train/data.h"
#include "train/flops.h"
#include "train/lora_merge.h"
#include "train/model_source.h"
#include "train/objective.h"
#include "train/plan.h"
#include "train/run_checkpoint.h"
#include "train/run_record.h"
#include "train/steerlm.h"
#include "train/upcycle.h"
#include "train/stop_signal.h"

namespace ff {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// " (unigram baseline X nats/token)" for pre-training data; SFT losses have no such baseline.
std::string baseline(const TrainResult& r) {
  return r.unigram_entropy > 0 ? strprintf(" (unigram baseline %.4f nats/token)", r.unigram_entropy) : "";
}

// The student's training-only parameters: the projection of its final norm's output to the
// teacher's width, for the hidden cosine loss when the widths differ.
TrainingExtras distillation_extras(const RunConfig& cfg) {
  TrainingExtras e;
  if (cfg.train.teacher.empty() || !cfg.train.kd_hidden_cosine) return e;
  const int64_t teacher_width = open_model_source(cfg.train.teacher).config.model.d_model;
  if (teacher_width != cfg.model.d_model) e.hidden_projection = teacher_width;
  return e;
}

// The config, once the run's planned memory per rank is known to fit (before anything is built).
RunConfig memory_checked(RunConfig cfg, const ParallelGrid& grid) {
  if (cfg.train.memory_check)
    check_planned_memory({cfg.model, cfg.parallel, grid.world_size(), cfg.train.micro_batch, cfg.train.grad_accum,
                          cfg.optim.distributed},
                         available_memory_per_rank());
  return cfg;
}
}  // namespace

Trainer::Trainer(RunConfig cfg, const ParallelGrid& grid)
    : cfg_(memory_checked(std::move(cfg), grid)), grid_(grid),
      student_("model", cfg_.model, cfg_.optim, grid, cfg_.train.seed, parse_name_globs(cfg_.train.freeze),
               distillation_extras(cfg_)),
      pipeline_(student_.model(), grid, cfg_.train.grad_accum) {
  check_freeze_globs();
  if (!cfg_.train.teacher.empty()) {
    // The teacher: another model in the same job, on the same grid, every parameter frozen.
    const ModelSource src = open_model_source(cfg_.train.teacher);
    ModelConfig tc = src.config.model;
    tc.precision = cfg_.model.precision;
    tc.head_chunk_rows = 0;
    FF_CHECK(tc.vocab_size == cfg_.model.vocab_size, "train.teacher '%s' has model.vocab_size = %lld, the student %lld: "
             "distillation compares distributions over the same vocabulary", cfg_.train.teacher.c_str(),
             (long long)tc.vocab_size, (long long)cfg_.model.vocab_size);
    FF_CHECK(cfg_.model.head_chunk_rows == 0, "distillation needs every row's logits: set model.head_chunk_rows = 0");
    const std::vector<std::string> layout = layout_problems(tc, cfg_.parallel);
    if (!layout.empty())
      throw UserError(strprintf("train.teacher '%s' cannot run on this job's parallel layout (it shares the "
                                "student's ranks and stages): %s", cfg_.train.teacher.c_str(), layout[0].c_str()));
    teacher_ = std::make_unique<ModelRole>("teacher", tc, grid, cfg_.train.seed);
    load_model_source(src, teacher_->model());
  }
  const Objective o = cfg_.train.objective;
  if (o != Objective::cross_entropy && o != Objective::attribute_regression)
    preference_ = std::make_unique<PreferenceTraining>(cfg_, student_, pipeline_, grid);
  if (cfg_.train.peak_tflops > 0) basis_ = ff::mfu_basis(cfg_.model.precision, cfg_.train.peak_tflops);
}

void move_earlier_run_aside(const TrainConfig& tc, bool quiet) {
  // A run into an out_dir that holds another run's results neither mixes with them nor replaces
  // them: their checkpoints, metrics and model files move into out_dir/previous-N first. A run
  // that resumes from out_dir's own checkpoints continues them instead.
  namespace fs = std::filesystem;
  const std::string ckpts = tc.out_dir + "/checkpoints";
  const bool continuing = !tc.resume.empty() && fs::exists(ckpts) &&
                          fs::weakly_canonical(tc.resume).string().rfind(fs::weakly_canonical(ckpts).string(), 0) == 0;
  if (continuing) return;
  std::vector<std::string> found;
  for (const char* name : {"checkpoints", "metrics.jsonl", "model.safetensors", "adapters.safetensors",
                           "run_config.json", "layout.json"})
    if (fs::exists(tc.out_dir + "/" + name)) found.push_back(name);
  if (found.empty()) return;
  std::string aside;
  for (int k = 1;; ++k) {
    aside = strprintf("%s/previous-%d", tc.out_dir.c_str(), k);
    if (!fs::exists(aside)) break;
  }
  fs::create_directories(aside);
  std::string list;
  for (const auto& name : found) {
    fs::rename(tc.out_dir + "/" + name, aside + "/" + name);
    list += (list.empty() ? "" : ", ") + name;
  }
  if (!quiet) std::printf("%s held an earlier run's %s: moved to %s (continue that run with --resume %s/checkpoints)\n",
                          tc.out_dir.c_str(), list.c_str(), aside.c_str(), aside.c_str());
}

void Trainer::check_freeze_globs() const {
  // A glob that matches no parameter on any rank is a typo, not a choice.
  const auto globs = parse_name_globs(cfg_.train.freeze);
  std::vector<int64_t> matches(globs.size(), 0);
  for (size_t g = 0; g < globs.size(); ++g)
    for (const Param& p : student_.model().params().params()) matches[g] += matches_any(p.name, {globs[g]});
  if (!globs.empty()) grid_.all().all_reduce_sum(matches.data(), static_cast<int64_t>(matches.size()));
  for (size_t g = 0; g < globs.size(); ++g)
    FF_CHECK(matches[g] > 0, "train.freeze: '%s' matches no parameter of this model (names look like "
             "model.embed_tokens.weight, model.layers.0.self_attn.q_proj.weight, model.norm.weight, lm_head.weight)",
             globs[g].c_str());
}

StepMetrics Trainer::step(int64_t step_index, const std::vector<std::vector<int32_t>>& tokens,
                          const std::vector<std::vector<int32_t>>& targets,
                          const std::vector<std::vector<int32_t>>* positions,
                          const std::vector<std::vector<float>>* rewards) {
  const int64_t M = static_cast<int64_t>(tokens.size()), B = cfg_.train.micro_batch, S = cfg_.model.seq_len;
  const int64_t DP = grid_.dp_size();
  StepMetrics m;
  m.step = step_index + 1;
  const double comm0 = grid_.communication_seconds();
  auto t_step = Clock::now();
  student_.model().params().zero_grads();
  PipelineResult r;
  if (preference_) {  // the mean over the step's pairs
    PairStats pairs;
    r = preference_->step(tokens, targets, B, S, positions,
                          rewards ? *rewards : std::vector<std::vector<float>>(tokens.size()), pairs);
    if (pairs.pairs > 0) {
      m.accuracy = pairs.correct / pairs.pairs;
      m.reward_chosen = pairs.chosen / pairs.pairs;
      m.reward_rejected = pairs.rejected / pairs.pairs;
    }
  } else if (cfg_.train.objective == Objective::attribute_regression) {  // the mean over the step's labels
    const std::vector<std::vector<float>> none(tokens.size());
    const std::vector<std::vector<float>>& labels = rewards ? *rewards : none;
    const AttributeRegression objective(static_cast<double>(step_label_count(labels, grid_.dp())), &labels);
    r = pipeline_.run(tokens, targets, B, S, objective, positions);
  } else {
    // The loss is the mean over the step's valid targets, on every replica and micro-batch together.
    const double step_tokens = static_cast<double>(step_target_count(targets, grid_.dp()));
    r = teacher_ ? pipeline_.run(tokens, targets, B, S,
                                 Distillation(teacher_->model(), step_tokens,
                                              {static_cast<float>(cfg_.train.kd_temperature), cfg_.train.kd_lm_loss,
                                               cfg_.train.kd_hidden_cosine}),
                                 positions)
                 : pipeline_.run(tokens, targets, B, S, TokenMeanCrossEntropy(step_tokens), positions);
  }
  m.forward_s = r.forward_s;
  m.backward_s = r.backward_s;
  auto t0 = Clock::now();
  m.lr = learning_rate(cfg_.optim, step_index, cfg_.train.steps);
  m.grad_norm = student_.optimizer_step(m.lr);
  m.optimizer_s = seconds_since(t0);
  // The replicas' contributions to the loss add up to it; the MoE losses are means over the replicas.
  double sums[3] = {r.loss, r.aux_loss, r.z_loss};
  grid_.dp().all_reduce_sum(sums, 3);
  m.loss = sums[0];
  m.aux_loss = sums[1] / static_cast<double>(DP);
  m.z_loss = sums[2] / static_cast<double>(DP);
  m.step_s = seconds_since(t_step);
  m.communication_s = grid_.communication_seconds() - comm0;
  m.tokens_per_s = static_cast<double>(DP * M * B * S) / m.step_s;
  if (basis_.peak_tflops > 0)  // Megatron: model FLOPs / (time x ranks) against one rank's peak
    m.mfu = training_flops(cfg_.model, DP * M * B, S) / m.step_s / static_cast<double>(grid_.world_size()) / 1e12 /
            basis_.peak_tflops;
  if (!r.expert_load.empty()) {
    double mx = 0, sum = 0;
    for (int64_t c : r.expert_load) {
      mx = std::max(mx, static_cast<double>(c));
      sum += static_cast<double>(c);
    }
    m.max_expert_load = mx;
    m.mean_expert_load = sum / static_cast<double>(r.expert_load.size());
    const size_t E = static_cast<size_t>(cfg_.model.num_experts);
    for (size_t first = 0; first + E <= r.expert_load.size(); first += E) {
      double layer_max = 0, layer_sum = 0;
      for (size_t e = first; e < first + E; ++e) {
        layer_max = std::max(layer_max, static_cast<double>(r.expert_load[e]));
        layer_sum += static_cast<double>(r.expert_load[e]);
      }
      m.layer_load_imbalance.push_back(layer_sum > 0 ? layer_max * static_cast<double>(E) / layer_sum : 0.0);
    }
  }
  m.dropped_fraction = r.routed_slots > 0 ? static_cast<double>(r.dropped_slots) / static_cast<double>(r.routed_slots) : 0.0;
  // The report's numbers, gathered over the job after the step's own communication was timed.
  m.expert_load = load_shares(global_expert_load(r.expert_load, student_.model(), cfg_.model, grid_));
  m.peak_memory_bytes = job_resident_peak_bytes(grid_);
  return m;
}

Validation Trainer::validate(const SampleSource& split, int64_t eval_samples) {
  const int64_t B = cfg_.train.micro_batch, S = cfg_.model.seq_len;
  std::vector<int32_t> tokens, targets, positions;
  const TokenMeanCrossEntropy token_sum(1.0);  // each batch's summed negative log-likelihood
  double loss = 0, count = 0;
  PairStats pairs;
  // The split's first eval_samples samples (all of a smaller split, e.g. a small SFT set), each
  // once, in micro-batches of B with the rows past the last one masked: the loss is the same
  // whatever the micro-batch size or the layout. Preference pairs: whole pairs.
  int64_t samples = std::min(eval_samples, split.size());
  if (preference_) samples = std::max<int64_t>(2, samples - samples % 2);
  for (int64_t b = 0; b * B < samples; ++b) {
    split.fill(tokens, targets, positions, b * B, B, S);  // the same samples at every evaluation, on every replica
    for (int64_t r = std::max<int64_t>(0, samples - b * B); r < B; ++r)
      std::fill(targets.begin() + r * S, targets.begin() + (r + 1) * S, -1);
    if (preference_) {
      PairStats batch;
      loss += preference_->evaluate(tokens, targets, B, S, &positions, split.sequence_labels(b * B, B), batch);
      pairs.add(batch);
      continue;
    }
    // Summed over the batch, then divided by its count: tokens, or an attribute model's labels.
    const std::vector<std::vector<float>> labels{split.sequence_labels(b * B, B)};
    const AttributeRegression squares(1.0, &labels);
    const bool attributes = cfg_.train.objective == Objective::attribute_regression;
    const ObjectiveValue v =
        pipeline_.evaluate(tokens, targets, B, S, attributes ? static_cast<const TokenObjective&>(squares) : token_sum,
                           &positions);
    loss += v.loss;
    count += static_cast<double>(v.tokens);
  }
  if (preference_) return {pairs.pairs > 0 ? loss / pairs.pairs : 0.0, pairs.pairs > 0 ? pairs.correct / pairs.pairs : 0.0};
  return {count > 0 ? loss / count : 0.0, 0.0};
}

TrainResult Trainer::run(bool quiet) {
  const auto& tc = cfg_.train;
  const int64_t B = tc.micro_batch, S = cfg_.model.seq_len;
  const int64_t dp = grid_.dp_size(), global_batch = dp * tc.grad_accum * B;
  TrainingData data = open_training_data(cfg_, std::max<int64_t>(1, tc.steps * global_batch), tc.eval_samples,
                                         grid_.all(), quiet);
  std::filesystem::create_directories(tc.out_dir);
  const bool lead = grid_.world_rank() == 0;
  // One run at a time in an out_dir (held until the run returns; released by the kernel if killed).
  std::unique_ptr<FileLock> out_dir_lock;
  if (lead) out_dir_lock = std::make_unique<FileLock>(tc.out_dir + "/.fivefold.lock", "out_dir " + tc.out_dir);
  if (lead) move_earlier_run_aside(cfg_.train, quiet);
  grid_.all().barrier();
  if (basis_.peak_tflops <= 0) basis_ = ff::mfu_basis(cfg_.model.precision, 0);
  if (lead && !quiet) {
    std::printf("%s\n", grid_.describe().c_str());
    std::printf("model: %s, pattern %s, %.2fM parameters (%.2fM active per token); %d threads\n",
                tc.model_preset.empty() ? "custom" : tc.model_preset.c_str(), cfg_.model.pattern().c_str(),
                count_parameters(cfg_.model) / 1e6, count_active_parameters(cfg_.model) / 1e6, omp_get_max_threads());
    std::printf("%s\n%lld steps of %lld x %lld x %lld tokens, %s GEMMs; %s\n", data.summary.c_str(),
                (long long)tc.steps, (long long)tc.grad_accum, (long long)B, (long long)S,
                enum_to_string(cfg_.model.precision).c_str(), basis_.describe(cfg_.model.precision).c_str());
    if (preference_) std::printf("objective: %s\n", preference_->describe().c_str());
    std::fflush(stdout);
  }
  // Checkpoints: resume (train.resume) restores parameters, optimizer and buffers here and the
  // data cursor below; SIGTERM/SIGINT save a checkpoint at the end of the current step.
  RunCheckpoint ckpt(cfg_, {&student_}, grid_);
  ckpt.show_progress(!quiet && stderr_is_terminal());
  StopSignalGuard stop_guard;
  TrainingState resumed;
  if (!tc.resume.empty()) {
    auto t_load = Clock::now();
    resumed = ckpt.resume();
    if (resumed.step >= tc.steps) {  // nothing to train: say so, evaluate nothing, change nothing
      if (lead && !quiet)
        std::printf("the checkpoint %s is at step %lld and train.steps = %lld: nothing to do (raise --steps to "
                    "train on)\n", tc.resume.c_str(), (long long)resumed.step, (long long)tc.steps);
      TrainResult nothing;
      nothing.nothing_to_do = true;
      return nothing;
    }
    if (lead) truncate_metrics(tc.out_dir + "/metrics.jsonl", resumed.step);
    if (lead && !quiet) std::printf("resumed from %s at step %lld (%.2f s)\n", tc.resume.c_str(), (long long)resumed.step,
                                    seconds_since(t_load));
  }
  if (!tc.init_from.empty() && tc.resume.empty()) {
    auto t_load = Clock::now();
    const ModelSource src = open_model_source(tc.init_from);
    TensorTransform upcycle;  // online upcycling: each rank builds its own experts from the dense tensors
    if (tc.upcycle_experts > 0)
      upcycle = [dense = src.config.model, o = UpcycleOptions::of(tc)](const TensorFetch& f, const std::string& n,
                                                                       HostTensor& out) {
        return upcycled_tensor(dense, o, f, n, out);
      };
    const LoadReport report = load_model_source(src, student_.model(), parse_name_globs(tc.init_new), upcycle);
    if (lead && !quiet) {
      std::printf("initialised from %s: %lld tensors (%.2f s)\n", tc.init_from.c_str(), (long long)report.loaded,
                  seconds_since(t_load));
      int64_t adapters = 0;
      for (const auto& n : report.fresh) {
        if (is_adapter_name(n)) {
          ++adapters;
          continue;
        }
        std::printf("  new (not in the source, freshly initialised): %s\n", n.c_str());
      }
      if (adapters > 0) std::printf("  %lld new LoRA adapter tensors (B = 0: the model starts as the source)\n",
                                    (long long)adapters);
      for (const auto& n : report.unused) std::printf("  unused (in the source, not in this model): %s\n", n.c_str());
    }
  }
  std::unique_ptr<TensorBoardWriter> tensorboard;  // the lead's, with train.tensorboard_dir
  if (lead && !tc.tensorboard_dir.empty()) tensorboard = std::make_unique<TensorBoardWriter>(tc.tensorboard_dir);
  if (lead) write_run_description(cfg_, grid_);  // run_config.json, layout.json: for `fivefold report`
  std::unique_ptr<AppendFile> metrics;  // written by the lead rank only, every record checked
  if (lead) metrics = std::make_unique<AppendFile>(tc.out_dir + "/metrics.jsonl", /*truncate=*/resumed.step == 0);

  TrainResult result;
  result.unigram_entropy = data.unigram_entropy;
  const Validation before = validate(*data.valid, tc.eval_samples);
  result.first_valid_loss = before.loss;
  if (lead && !quiet)
    std::printf("validation loss before training %.4f%s%s\n", result.first_valid_loss, baseline(result).c_str(),
                preference_ ? strprintf(", pairwise accuracy %.3f", before.accuracy).c_str() : "");
  SampleCursor data_cursor;  // the data source's resumable position
  data_cursor.data = tc.data_path;
  if (!tc.resume.empty()) data_cursor.load_cursor(resumed.data_cursor);
  std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(tc.grad_accum)), targets(tokens.size()),
      positions(tokens.size());
  std::vector<std::vector<float>> rewards(tokens.size());  // ground-truth rewards of preference pairs (RPO)
  // From here on the lead's lines go through a writer thread: a step never waits on stdout.
  std::unique_ptr<ConsoleLog> console = lead ? std::make_unique<ConsoleLog>() : nullptr;
  auto t_start = Clock::now();
  for (int64_t s = resumed.step; s < tc.steps; ++s) {
    for (size_t m = 0; m < tokens.size(); ++m) {  // micro-batch m of data-parallel rank r: samples (m * dp + r) * B ..
      const int64_t first = data_cursor.next_sample + (static_cast<int64_t>(m) * dp + grid_.dp().rank()) * B;
      data.train->fill(tokens[m], targets[m], positions[m], first, B, S);
      rewards[m] = data.train->sequence_labels(first, B);
    }
    data_cursor.next_sample += global_batch;
    StepMetrics m = step(s, tokens, targets, &positions, &rewards);
    result.losses.push_back(m.loss);
    nlohmann::json rec = {{"step", m.step}, {"loss", m.loss}, {"aux_loss", m.aux_loss}, {"z_loss", m.z_loss},
                          {"lr", m.lr}, {"grad_norm", m.grad_norm}, {"tokens_per_s", m.tokens_per_s},
                          {"mfu", m.mfu}, {"step_s", m.step_s}, {"forward_s", m.forward_s},
                          {"backward_s", m.backward_s}, {"optimizer_s", m.optimizer_s},
                          {"max_expert_load", m.max_expert_load}, {"mean_expert_load", m.mean_expert_load},
                          {"dropped_fraction", m.dropped_fraction}};
    if (!m.layer_load_imbalance.empty()) rec["expert_load_max_over_mean"] = m.layer_load_imbalance;
    if (!m.expert_load.empty()) rec["expert_load"] = m.expert_load;
    rec["peak_memory_bytes"] = m.peak_memory_bytes;
    if (preference_) {
      rec["accuracy"] = m.accuracy;
      rec["reward_chosen"] = m.reward_chosen;
      rec["reward_rejected"] = m.reward_rejected;
      rec["margin"] = m.reward_chosen - m.reward_rejected;
    }
    const bool last = s + 1 == tc.steps;
    if ((tc.eval_interval > 0 && m.step % tc.eval_interval == 0) || last) {
      const Validation v = validate(*data.valid, tc.eval_samples);
      rec["valid_loss"] = v.loss;
      if (preference_) rec["valid_accuracy"] = v.accuracy;
      result.final_valid_loss = v.loss;
      result.final_valid_accuracy = v.accuracy;
    }
    rec["communication_s"] = m.communication_s;
    if (lead) {
      metrics->write_line(rec.dump());
      if (tensorboard) {
        tensorboard->scalars(rec, m.step);
        if (m.step % tc.log_interval == 0 || last) tensorboard->flush();
      }
    }
    if (lead && !quiet && (m.step % tc.log_interval == 0 || last || rec.contains("valid_loss"))) {
      double elapsed = seconds_since(t_start);
      double eta = elapsed / static_cast<double>(s + 1 - resumed.step) * static_cast<double>(tc.steps - s - 1);
      console->line(strprintf("step %5lld/%lld %3.0f%% | loss %.4f | aux %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | "
                  "MFU %.1f%% | load max/mean %.2f | drop %.3f | ETA %s%s",
                  (long long)m.step, (long long)tc.steps, 100.0 * static_cast<double>(m.step) / static_cast<double>(tc.steps),
                  m.loss, m.aux_loss, m.lr, m.grad_norm, m.tokens_per_s, 100.0 * m.mfu,
                  m.mean_expert_load > 0 ? m.max_expert_load / m.mean_expert_load : 0.0, m.dropped_fraction,
                  format_duration(eta).c_str(),
                  rec.contains("valid_loss") ? strprintf(" | valid %.4f", rec["valid_loss"].get<double>()).c_str() : "")
                  + (preference_ ? strprintf(" | acc %.3f | margin %.3f%s", m.accuracy, m.reward_chosen - m.reward_rejected,
                                             rec.contains("valid_accuracy")
                                                 ? strprintf(" | valid acc %.3f", rec["valid_accuracy"].get<double>()).c_str()
                                                 : "")
                                 : std::string()));
    }
    const bool stop = ckpt.stop_agreed();
    if (ckpt.due(m.step) || stop) {
      auto t_save = Clock::now();
      const std::string dir = ckpt.save(m.step, data_cursor);
      if (lead && !quiet) console->line(strprintf("saved checkpoint %s (%.2f s)", dir.c_str(), seconds_since(t_save)));
    }
    if (stop) {
      result.stopped = true;
      if (lead)
        console->line(strprintf("stopped by a signal after step %lld; continue with --resume %s", (long long)m.step,
                                ckpt.save_dir().c_str()));
      break;
    }
  }
  if (tc.steps == 0) result.final_valid_loss = result.first_valid_loss;
  result.first_loss = result.losses.empty() ? 0 : result.losses.front();
  result.final_loss = result.losses.empty() ? 0 : result.losses.back();
  if (!result.stopped) {
    const std::string path = tc.out_dir + "/model.safetensors";
    // The model file carries the tokenizer the data was made with (opened at start, so it exists).
    const TokenizerFile tokenizer = run_tokenizer_file(cfg_);
    if (grid_.world_size() == 1) {
      save_model(student_.model(), cfg_, path, &tokenizer);
    } else {
      // Every rank writes its slices to a checkpoint; the lead assembles the whole model from it.
      const std::string dir = ckpt.save(tc.steps, data_cursor);
      if (lead) save_model_from_checkpoint(dir, cfg_, path, &tokenizer);
      grid_.all().barrier();
    }
    if (lead && cfg_.model.lora_rank > 0) save_adapters(path, tc.out_dir + "/adapters.safetensors");
    if (lead && !quiet)
      console->line(strprintf("saved %s; validation loss %.4f -> %.4f%s", path.c_str(), result.first_valid_loss,
                              result.final_valid_loss, baseline(result).c_str()));
  }
  return result;
}

namespace {
std::map<std::string, std::string> model_metadata(RunConfig& cfg, const TokenizerFile* tokenizer) {
  std::map<std::string, std::string> m = {{"fivefold_config", run_config_to_json(cfg)}, {"format", "fivefold-model-1"}};
  if (tokenizer) m["fivefold_tokenizer"] = tokenizer_file_to_json(*tokenizer);
  return m;
}
}  // namespace

void save_model(DecoderLM& model, RunConfig& cfg, const std::string& path, const TokenizerFile* tokenizer,
                bool progress) {
  std::vector<SafetensorsEntry> entries;
  for (const Param& p : model.params().params())
    if (!is_training_only_name(p.name)) entries.push_back({p.name, p.global_shape.vec(), p.value});
  Progress shown("writing " + path, safetensors_data_bytes(entries), ProgressUnit::bytes, "", printing(progress));
  write_safetensors(path, entries, model_metadata(cfg, tokenizer), &shown);
}

void save_model_from_checkpoint(const std::string& folder, RunConfig& cfg, const std::string& path,
                                const TokenizerFile* tokenizer, const std::string& role) {
  const auto tensors = read_checkpoint_model(folder, role);
  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, t] : tensors)
    if (name.find("expert_bias") == std::string::npos) entries.push_back({name, t.shape, t.data.data()});
  RunConfig single = cfg;
  single.parallel = ParallelConfig{};  // the file holds the whole model
  write_safetensors(path, entries, model_metadata(single, tokenizer));
}

void save_adapters(const std::string& model_path, const std::string& path) {
  SafetensorsFile f(model_path);
  std::vector<HostTensor> held;
  std::vector<std::string> names;
  for (const auto& n : f.names())
    if (is_adapter_name(n)) {
      names.push_back(n);
      held.push_back(f.read_any(n));
    }
  std::vector<SafetensorsEntry> entries;
  for (size_t i = 0; i < names.size(); ++i) entries.push_back({names[i], held[i].shape, held[i].data.data()});
  auto meta = f.metadata();
  meta["format"] = "fivefold-lora-adapters-1";
  write_safetensors(path, entries, meta);
}

RunConfig load_model_config(const std::string& path) {
  SafetensorsFile f(path);
  auto it = f.metadata().find("fivefold_config");
  FF_CHECK(it != f.metadata().end(), "'%s' has no fivefold_config metadata; was it written by fivefold train?",
           path.c_str());
  return run_config_from_json(it->second, path + " (metadata)");
}

void load_model_weights(DecoderLM& model, const std::string& path) {
  SafetensorsFile f(path);
  for (Param& p : model.params().params()) f.read(p.name, p.global_shape.vec(), p.value);
}

}  // namespace ff
