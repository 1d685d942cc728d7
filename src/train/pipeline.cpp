#include "train/pipeline.h"

#include <algorithm>
#include <chrono>

#include "parallel/schedule.h"

namespace ff {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int64_t micro_batch_records(int64_t P, int64_t p, int64_t M, int64_t V) {
  // 1F1B: stage p runs F(m) only after B(m - W - 1), so W + 1 records serve all micro-batches
  // (one stage: W = 0, a single record). A record's sends are completed before it is reused:
  // their receivers need nothing more from this stage to post the receives, so the wait ends.
  // Interleaved: one record per micro-batch.
  return V == 1 ? std::min(M, pipeline_warmup(P, p, M, 1) + 1) : M;
}

PipelineExecutor::PipelineExecutor(DecoderLM& model, const ParallelGrid& grid, int64_t micro_batches)
    : model_(model), grid_(grid), M_(micro_batches) {
  const int64_t records = micro_batch_records(grid.pp().size(), grid.pp().rank(), M_, model.num_chunks());
  for (int64_t m = 0; m < records; ++m) micro_batches_.push_back(model.new_micro_batch());
  activations_.resize(static_cast<size_t>(records * model.num_chunks()));
  gradients_.resize(activations_.size());
  dlogp_.resize(static_cast<size_t>(records));
  dlogits_.resize(static_cast<size_t>(records));
  dhidden_.resize(static_cast<size_t>(records));
  sends_.resize(static_cast<size_t>(records));
}

PipelineResult PipelineExecutor::run(const std::vector<std::vector<int32_t>>& tokens,
                                     const std::vector<std::vector<int32_t>>& targets, int64_t B, int64_t S,
                                     const TokenObjective& objective,
                                     const std::vector<std::vector<int32_t>>* positions) {
  return run_step(tokens, targets, B, S, &objective, nullptr, positions);
}

PipelineResult PipelineExecutor::run(const std::vector<std::vector<int32_t>>& tokens,
                                     const std::vector<std::vector<int32_t>>& targets, int64_t B, int64_t S,
                                     const LogitObjective& objective,
                                     const std::vector<std::vector<int32_t>>* positions) {
  return run_step(tokens, targets, B, S, nullptr, &objective, positions);
}

void PipelineExecutor::prepare_companion(DecoderLM* companion) {
  if (companion == companion_) return;
  companion_ = companion;
  companion_records_.clear();
  companion_activations_.clear();
  if (!companion) return;
  FF_CHECK(companion->num_chunks() == model_.num_chunks(), "the companion model (teacher) has %lld chunks per "
           "stage, the model %lld: both run on the same pipeline layout", (long long)companion->num_chunks(),
           (long long)model_.num_chunks());
  for (size_t r = 0; r < micro_batches_.size(); ++r) companion_records_.push_back(companion->new_micro_batch());
  companion_activations_.resize(activations_.size());
}

PipelineResult PipelineExecutor::run_step(const std::vector<std::vector<int32_t>>& tokens,
                                          const std::vector<std::vector<int32_t>>& targets, int64_t B, int64_t S,
                                          const TokenObjective* token_objective,
                                          const LogitObjective* logit_objective,
                                          const std::vector<std::vector<int32_t>>* positions) {
  FF_CHECK(static_cast<int64_t>(tokens.size()) == M_ && targets.size() == tokens.size(),
           "pipeline step: %zu micro-batches given, %lld expected", tokens.size(), (long long)M_);
  const Communicator& pp = grid_.pp();
  const int64_t P = pp.size(), p = pp.rank(), V = model_.num_chunks(), VS = P * V;
  const int64_t rows = model_.stream_rows(B, S), width = rows * model_.config().d_model;
  // Tag of a message to virtual stage vs for micro-batch m (dir 0: activation, 1: gradient, 2: the
  // companion's activation).
  auto tag = [&](int64_t m, int64_t vs, int dir) { return static_cast<int>((m * VS + vs) * 3 + dir); };
  prepare_companion(logit_objective ? logit_objective->companion() : nullptr);
  const int64_t companion_width = companion_ ? companion_->stream_rows(B, S) * companion_->config().d_model : 0;
  auto stage_of = [&](int64_t vs) { return static_cast<int>(vs % P); };
  const float objective_scale = static_cast<float>(grid_.dp_size()), moe_scale = 1.0f / static_cast<float>(M_);

  PipelineResult result;
  std::vector<std::vector<int64_t>> load(static_cast<size_t>(V));  // per chunk, summed over micro-batches
  for (const PipeAction& a : pipeline_schedule(P, p, M_, V)) {
    const int64_t m = a.microbatch, c = a.chunk, vs = c * P + p;
    const size_t rec = static_cast<size_t>(m) % micro_batches_.size();
    auto& mb = *micro_batches_[rec];
    auto& act = activations_[rec * static_cast<size_t>(V) + static_cast<size_t>(c)];
    auto& grad = gradients_[rec * static_cast<size_t>(V) + static_cast<size_t>(c)];
    if (a.op == PipeOp::forward && c == 0) Communicator::wait(sends_[rec]);  // the record's last user's sends
    if (a.op == PipeOp::forward) {
      const float* input = nullptr;
      if (vs > 0) {
        act.resize(static_cast<size_t>(width));
        pp.recv(act.data(), width, stage_of(vs - 1), tag(m, vs, 0));
        input = act.data();
      }
      auto t0 = std::chrono::steady_clock::now();
      const int32_t* pos = positions && !(*positions)[static_cast<size_t>(m)].empty()
                               ? (*positions)[static_cast<size_t>(m)].data() : nullptr;
      ForwardResult r = model_.forward_chunk(mb, c, tokens[static_cast<size_t>(m)].data(),
                                             targets[static_cast<size_t>(m)].data(), B, S, input, pos);
      result.forward_s += seconds_since(t0);
      if (vs < VS - 1) pp.send(model_.chunk_output(mb, c), width, stage_of(vs + 1), tag(m, vs + 1, 0), sends_[rec]);
      if (companion_) {  // forward only, no dropout; nothing of it is kept for a backward
        auto& cact = companion_activations_[rec * static_cast<size_t>(V) + static_cast<size_t>(c)];
        auto& cmb = *companion_records_[rec];
        if (vs > 0) {
          cact.resize(static_cast<size_t>(companion_width));
          pp.recv(cact.data(), companion_width, stage_of(vs - 1), tag(m, vs, 2));
        }
        auto t1 = std::chrono::steady_clock::now();
        companion_->set_training(false);
        companion_->forward_chunk(cmb, c, tokens[static_cast<size_t>(m)].data(), nullptr, B, S,
                                  vs > 0 ? cact.data() : nullptr, pos);
        companion_->set_training(true);
        result.forward_s += seconds_since(t1);
        if (vs < VS - 1)
          pp.send(companion_->chunk_output(cmb, c), companion_width, stage_of(vs + 1), tag(m, vs + 1, 2), sends_[rec]);
      }
      if (vs == VS - 1) {
        HeadRows in = model_.head_rows(mb);
        in.micro_batch = m;
        ObjectiveValue v;
        if (token_objective) {
          dlogp_[rec].resize(static_cast<size_t>(in.B * in.S * in.width));
          v = token_objective->evaluate(in, dlogp_[rec].data());
        } else {
          StudentLogits sl;
          sl.logits = model_.head_logits(mb);
          sl.lse = model_.head_lse(mb);
          sl.rows = in;
          sl.tokens = tokens[static_cast<size_t>(m)].data();
          sl.positions = pos;
          sl.S_full = S;
          sl.Vl = model_.vocab_shard();
          sl.v0 = model_.vocab_offset();
          sl.tp = model_.vocab_group();
          if (companion_) {
            sl.companion_logits = companion_->logits(*companion_records_[rec]);
            sl.companion_Vl = companion_->vocab_shard();
          }
          float* dhidden = nullptr;
          if (logit_objective->uses_hidden()) {
            sl.hidden = model_.head_hidden(mb);
            sl.hidden_width = model_.head_hidden_width();
            if (companion_) {
              sl.companion_hidden = companion_->head_hidden(*companion_records_[rec]);
              sl.companion_hidden_width = companion_->head_hidden_width();
            }
            dhidden_[rec].resize(static_cast<size_t>(in.B * in.S * sl.hidden_width));
            dhidden = dhidden_[rec].data();
          }
          dlogits_[rec].resize(static_cast<size_t>(in.B * in.S * sl.Vl));
          v = logit_objective->evaluate(sl, dlogits_[rec].data(), dhidden);
        }
        result.loss += v.loss;
        result.tokens += v.tokens;
      }
      result.aux_loss += r.aux_loss / static_cast<double>(M_);
      result.z_loss += r.z_loss / static_cast<double>(M_);
      result.routed_slots += r.routed_slots;
      result.dropped_slots += r.dropped_slots;
      auto& l = load[static_cast<size_t>(c)];
      l.resize(r.expert_load.size(), 0);
      for (size_t e = 0; e < r.expert_load.size(); ++e) l[e] += r.expert_load[e];
    } else {
      const float* dout = nullptr;
      if (vs < VS - 1) {
        grad.resize(static_cast<size_t>(width));
        pp.recv(grad.data(), width, stage_of(vs + 1), tag(m, vs, 1));
        dout = grad.data();
      }
      auto t0 = std::chrono::steady_clock::now();
      HeadGradient g;
      if (vs == VS - 1)
        g = token_objective ? HeadGradient(dlogp_[rec].data())
                            : HeadGradient::of_logits(dlogits_[rec].data(),
                                                      logit_objective->uses_hidden() ? dhidden_[rec].data() : nullptr);
      const float* din = model_.backward_chunk(mb, c, dout, g, objective_scale, moe_scale);
      result.backward_s += seconds_since(t0);
      if (vs > 0) pp.send(din, width, stage_of(vs - 1), tag(m, vs - 1, 1), sends_[rec]);
    }
  }
  for (auto& s : sends_) Communicator::wait(s);
  for (const auto& l : load) result.expert_load.insert(result.expert_load.end(), l.begin(), l.end());
  // The loss lives on the last stage, the MoE losses on every stage: sum them over the stages.
  double sums[4] = {result.loss, result.aux_loss, result.z_loss, static_cast<double>(result.tokens)};
  pp.all_reduce_sum(sums, 4);
  result.loss = sums[0];
  result.aux_loss = sums[1];
  result.z_loss = sums[2];
  result.tokens = static_cast<int64_t>(sums[3]);
  return result;
}

ObjectiveValue PipelineExecutor::evaluate(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                                          int64_t B, int64_t S, const TokenObjective& objective,
                                          const std::vector<int32_t>* positions) {
  // Forward only, one micro-batch through every virtual stage in order: a chain, so each stage's
  // sends complete once the next stage has received them. No dropout.
  model_.set_training(false);
  const Communicator& pp = grid_.pp();
  const int64_t P = pp.size(), p = pp.rank(), V = model_.num_chunks(), VS = P * V;
  const int64_t width = model_.stream_rows(B, S) * model_.config().d_model;
  auto& mb = *micro_batches_[0];
  std::vector<float> input(static_cast<size_t>(width));
  double value[2] = {0, 0};  // loss, tokens
  for (int64_t c = 0; c < V; ++c) {
    const int64_t vs = c * P + p;
    if (vs > 0) pp.recv(input.data(), width, static_cast<int>((vs - 1) % P), static_cast<int>(vs));
    model_.forward_chunk(mb, c, tokens.data(), targets.data(), B, S, vs > 0 ? input.data() : nullptr,
                         positions && !positions->empty() ? positions->data() : nullptr);
    if (vs < VS - 1) {
      pp.send(model_.chunk_output(mb, c), width, static_cast<int>((vs + 1) % P), static_cast<int>(vs + 1));
      pp.wait_sends();
    } else {
      const HeadRows in = model_.head_rows(mb);
      dlogp_[0].resize(static_cast<size_t>(in.B * in.S * in.width));
      const ObjectiveValue v = objective.evaluate(in, dlogp_[0].data());
      value[0] = v.loss;
      value[1] = static_cast<double>(v.tokens);
    }
  }
  model_.set_training(true);
  pp.all_reduce_sum(value, 2);
  return {value[0], static_cast<int64_t>(value[1])};
}

}  // namespace ff
