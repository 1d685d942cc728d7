#include "train/preference_step.h"

#include "train/model_source.h"

namespace ff {

PreferenceTraining::PreferenceTraining(const RunConfig& cfg, ModelRole& policy, PipelineExecutor& policy_pipeline,
                                       const ParallelGrid& grid)
    : options_(PairwiseOptions::of(cfg.train)), policy_(policy), policy_pipeline_(policy_pipeline), grid_(grid) {
  if (!needs_reference()) return;
  const auto& tc = cfg.train;
  if (tc.reference.empty() && cfg.model.lora_rank > 0) {
    reference_source_ = "the policy with its LoRA adapters off";
    return;
  }
  reference_source_ = tc.reference.empty() ? tc.init_from : tc.reference;
  FF_CHECK(!reference_source_.empty(), "train.objective = %s compares the policy with a frozen reference: give "
           "train.reference, or train.init_from (the reference is then the model training starts from)",
           enum_to_string(tc.objective).c_str());
  const ModelSource src = open_model_source(reference_source_);
  ModelConfig rc = src.config.model;
  rc.precision = cfg.model.precision;
  rc.head_chunk_rows = cfg.model.head_chunk_rows;
  rc.lora_rank = 0;
  FF_CHECK(rc.vocab_size == cfg.model.vocab_size, "the reference '%s' has model.vocab_size = %lld, the policy %lld: "
           "DPO compares log-probabilities of the same tokens, so both need the same vocabulary",
           reference_source_.c_str(), (long long)rc.vocab_size, (long long)cfg.model.vocab_size);
  reference_ = std::make_unique<ModelRole>("reference", rc, grid, tc.seed);
  load_model_source(src, reference_->model());
  reference_pipeline_ = std::make_unique<PipelineExecutor>(reference_->model(), grid, 1);
}

int64_t PreferenceTraining::reference_bytes() const {
  if (!reference_) return 0;
  const ParamStore& p = reference_->model().params();
  const bool bf16 = reference_->model().config().precision == Precision::bf16;
  return p.numel() * static_cast<int64_t>(sizeof(float) + (bf16 ? sizeof(bf16_t) : 0));
}

std::string PreferenceTraining::describe() const {
  if (!needs_reference()) return "reward model: pairwise Bradley-Terry loss on the value at each response's end";
  const std::string memory = reference_ ? strprintf("its weights: %.1f MiB per rank", reference_bytes() / 1048576.0)
                                        : std::string("no second copy of the weights");
  return strprintf("%s against the reference %s (beta %g; %s)", enum_to_string(options_.kind).c_str(),
                   reference_source_.c_str(), options_.beta, memory.c_str());
}

std::vector<double> PreferenceTraining::reference_logps(const std::vector<int32_t>& tokens,
                                                        const std::vector<int32_t>& targets, int64_t B, int64_t S,
                                                        const std::vector<int32_t>* positions) {
  std::vector<double> out;
  const ReferenceLogps capture(out, options_.average_log_probs);
  if (reference_) {
    reference_pipeline_->evaluate(tokens, targets, B, S, capture, positions);
  } else {  // the base of the LoRA policy
    policy_.model().set_adapters(false);
    policy_pipeline_.evaluate(tokens, targets, B, S, capture, positions);
    policy_.model().set_adapters(true);
  }
  return out;  // filled on the last pipeline stage, where the objective runs
}

PairStats PreferenceTraining::whole(const PairStats& mine) const {
  double s[4] = {mine.pairs, mine.correct, mine.chosen, mine.rejected};
  grid_.pp().all_reduce_sum(s, 4);  // only the last stage evaluated the objective
  grid_.dp().all_reduce_sum(s, 4);
  return {s[0], s[1], s[2], s[3]};
}

PipelineResult PreferenceTraining::step(const std::vector<std::vector<int32_t>>& tokens,
                                        const std::vector<std::vector<int32_t>>& targets, int64_t B, int64_t S,
                                        const std::vector<std::vector<int32_t>>* positions,
                                        const std::vector<std::vector<float>>& rewards, PairStats& stats) {
  std::vector<std::vector<double>> reference(tokens.size());
  if (needs_reference())
    for (size_t m = 0; m < tokens.size(); ++m)
      reference[m] = reference_logps(tokens[m], targets[m], B, S, positions ? &(*positions)[m] : nullptr);
  const double pairs = static_cast<double>(step_pair_count(targets, S, grid_.dp()));
  const PairwiseObjective objective(options_, pairs, &reference, &rewards);
  PipelineResult r = policy_pipeline_.run(tokens, targets, B, S, objective, positions);
  stats = whole(objective.stats());
  return r;
}

double PreferenceTraining::evaluate(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets, int64_t B,
                                    int64_t S, const std::vector<int32_t>* positions, const std::vector<float>& rewards,
                                    PairStats& stats) {
  std::vector<std::vector<double>> reference(1);
  if (needs_reference()) reference[0] = reference_logps(tokens, targets, B, S, positions);
  const std::vector<std::vector<float>> r{rewards};
  const PairwiseObjective objective(options_, 1.0, &reference, &r);  // the pairs' summed loss
  const double loss = policy_pipeline_.evaluate(tokens, targets, B, S, objective, positions).loss;
  PairStats mine = objective.stats();
  grid_.pp().all_reduce_sum(&mine.pairs, 1);  // (every replica evaluates the same pairs: no DP sum)
  double s[3] = {mine.correct, mine.chosen, mine.rejected};
  grid_.pp().all_reduce_sum(s, 3);
  stats = {mine.pairs, s[0], s[1], s[2]};
  return loss;
}

}  // namespace ff
