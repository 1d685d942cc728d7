#include "train/preference_objective.h"

#include <cmath>

namespace ff {

namespace {
double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }
double softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

// log sigmoid(x) and log(1 - sigmoid(x)) = log sigmoid(-x), stable for any x.
double log_sigmoid(double x) { return -softplus(-x); }

// The rows with a target per sequence, complete over the CP group.
std::vector<double> target_rows(const HeadRows& in) {
  std::vector<double> n(static_cast<size_t>(in.B), 0.0);
  for (int64_t b = 0; b < in.B; ++b)
    for (int64_t s = 0; s < in.S; ++s) n[static_cast<size_t>(b)] += in.targets[b * in.S + s] >= 0;
  if (in.cp) in.cp->all_reduce_sum(n.data(), in.B);
  return n;
}

}  // namespace

bool uses_rewards(Objective o) {
  return o == Objective::rpo_sq || o == Objective::rpo_fwd_kl || o == Objective::rpo_bwd_kl;
}

void PairStats::add(const PairStats& o) {
  pairs += o.pairs;
  correct += o.correct;
  chosen += o.chosen;
  rejected += o.rejected;
}

PairwiseOptions PairwiseOptions::of(const TrainConfig& tc) {
  return {tc.objective, tc.dpo_beta, tc.dpo_sft_weight, tc.rpo_eta, tc.dpo_average_log_probs};
}

std::vector<double> sequence_logps(const HeadRows& in, bool average) {
  std::vector<double> sum(static_cast<size_t>(in.B), 0.0);
  for (int64_t b = 0; b < in.B; ++b)
    for (int64_t s = 0; s < in.S; ++s) {
      const int64_t row = b * in.S + s;
      if (in.targets[row] >= 0) sum[static_cast<size_t>(b)] += in.value[row];
    }
  if (in.cp) in.cp->all_reduce_sum(sum.data(), in.B);
  if (average) {
    const auto n = target_rows(in);
    for (size_t b = 0; b < sum.size(); ++b) sum[b] = n[b] > 0 ? sum[b] / n[b] : 0.0;
  }
  return sum;
}

PairLoss pair_loss(const PairwiseOptions& o, double d, double dr) {
  const double beta = o.beta, z = beta * d, target = o.eta * dr;
  switch (o.kind) {
    case Objective::bradley_terry: return {softplus(-d), -sigmoid(-d)};
    case Objective::dpo: return {softplus(-z), -beta * sigmoid(-z)};
    case Objective::ipo: {
      const double e = d - 1.0 / (2.0 * beta);
      return {e * e, 2.0 * e};
    }
    case Objective::rpo_sq: {
      const double e = z - target;
      return {e * e, 2.0 * beta * e};
    }
    case Objective::rpo_fwd_kl: {  // a = sigmoid(eta dr) the target, p = sigmoid(z) the policy's
      const double a = sigmoid(target), p = sigmoid(z);
      const double kl = a * (log_sigmoid(target) - log_sigmoid(z)) + (1 - a) * (log_sigmoid(-target) - log_sigmoid(-z));
      return {kl, beta * (p - a)};
    }
    case Objective::rpo_bwd_kl: {
      const double p = sigmoid(z);
      const double kl = p * (log_sigmoid(z) - log_sigmoid(target)) + (1 - p) * (log_sigmoid(-z) - log_sigmoid(-target));
      return {kl, beta * p * (1 - p) * (z - target)};  // dKL/dz = p (1 - p) (logit p - logit a)
    }
    case Objective::cross_entropy:
    case Objective::attribute_regression: break;
  }
  FF_FAIL("pair_loss: %s is not a pairwise objective", enum_to_string(o.kind).c_str());
}

ObjectiveValue ReferenceLogps::evaluate(const HeadRows& in, float* dlogp) const {
  out_ = sequence_logps(in, average_);
  std::fill(dlogp, dlogp + in.B * in.S, 0.0f);
  ObjectiveValue v;
  for (double n : target_rows(in)) v.tokens += static_cast<int64_t>(n);
  return v;
}

PairwiseObjective::PairwiseObjective(const PairwiseOptions& o, double total_pairs,
                                     const std::vector<std::vector<double>>* reference,
                                     const std::vector<std::vector<float>>* rewards)
    : o_(o), total_(total_pairs), reference_(reference), rewards_(uses_rewards(o.kind) ? rewards : nullptr) {
  FF_CHECK(o.kind == Objective::bradley_terry || reference, "%s needs the reference's log-probs",
           enum_to_string(o.kind).c_str());
  FF_CHECK(!uses_rewards(o.kind) || rewards, "%s needs ground-truth rewards", enum_to_string(o.kind).c_str());
}

ObjectiveValue PairwiseObjective::evaluate(const HeadRows& in, float* dlogp) const {
  const int64_t B = in.B, S = in.S;
  FF_CHECK(B % 2 == 0, "a pairwise objective needs whole pairs: B = %lld", (long long)B);
  const bool reward_model = o_.kind == Objective::bradley_terry;
  const auto rows = target_rows(in);
  std::vector<int64_t> last_row;
  std::vector<double> score;  // per sequence: r (reward model) or Delta (DPO family)
  std::vector<double> lp;     // the policy's log-probs per sequence (DPO family)
  if (reward_model) {
    FF_CHECK(in.width == 1, "the Bradley-Terry reward model reads one value per row (model.value_outputs = 1), "
             "not %lld", (long long)in.width);
    score = last_row_values(in, last_row);
  } else {
    const auto m = static_cast<size_t>(in.micro_batch);
    FF_CHECK(reference_ && m < reference_->size() && static_cast<int64_t>((*reference_)[m].size()) == B,
             "the reference log-probs of micro-batch %lld are missing", (long long)in.micro_batch);
    lp = sequence_logps(in, o_.average_log_probs);
    score.resize(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) score[static_cast<size_t>(b)] = lp[static_cast<size_t>(b)] - (*reference_)[m][static_cast<size_t>(b)];
  }
  // d loss / d score per sequence, and the SFT term's weight on the chosen rows.
  std::vector<double> dscore(static_cast<size_t>(B), 0.0);
  ObjectiveValue v;
  for (double n : rows) v.tokens += static_cast<int64_t>(n);
  const double scale = total_ > 0 ? 1.0 / total_ : 0.0;
  for (int64_t i = 0; i < B / 2; ++i) {
    const size_t c = static_cast<size_t>(2 * i), r = c + 1;
    if (rows[c] == 0 || rows[r] == 0) continue;  // padding past the end of a split
    double dr = 0;
    if (rewards_) {
      const auto& w = (*rewards_)[static_cast<size_t>(in.micro_batch)];
      FF_CHECK(static_cast<int64_t>(w.size()) == B, "the rewards of micro-batch %lld are missing", (long long)in.micro_batch);
      dr = static_cast<double>(w[c]) - static_cast<double>(w[r]);
    }
    const double d = score[c] - score[r];
    const PairLoss l = pair_loss(o_, d, dr);
    v.loss += l.loss * scale;
    dscore[c] += l.dloss * scale;
    dscore[r] -= l.dloss * scale;
    if (!reward_model && o_.sft_weight > 0) {  // -w lp_sum(chosen): its own sum, whatever averaging
      double sum = lp[c] * (o_.average_log_probs ? rows[c] : 1.0);
      v.loss += -o_.sft_weight * sum * scale;
    }
    const double shown = reward_model ? 1.0 : o_.beta;  // implicit rewards: beta Delta, or r itself
    stats_.pairs += 1;
    stats_.correct += d > 0;
    stats_.chosen += shown * score[c];
    stats_.rejected += shown * score[r];
  }
  // Back to the rows: the reward model's score is one row's value, the DPO family's a sum (mean)
  // of every target row's log-prob.
  std::fill(dlogp, dlogp + B * S, 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    const size_t i = static_cast<size_t>(b);
    if (reward_model) {
      if (last_row[i] >= 0) dlogp[last_row[i]] = static_cast<float>(dscore[i]);
      continue;
    }
    double g = rows[i] > 0 && o_.average_log_probs ? dscore[i] / rows[i] : dscore[i];
    const bool chosen = b % 2 == 0, paired = rows[i ^ 1] > 0 && rows[i] > 0;
    if (chosen && paired && o_.sft_weight > 0) g += -o_.sft_weight * scale;
    for (int64_t s = 0; s < S; ++s)
      if (in.targets[b * S + s] >= 0) dlogp[b * S + s] = static_cast<float>(g);
  }
  return v;
}

int64_t count_pairs(const std::vector<int32_t>& targets, int64_t S) {
  const int64_t B = static_cast<int64_t>(targets.size()) / S;
  auto has_target = [&](int64_t b) {
    for (int64_t s = 0; s < S; ++s)
      if (targets[static_cast<size_t>(b * S + s)] >= 0) return true;
    return false;
  };
  int64_t n = 0;
  for (int64_t i = 0; i + 1 < B; i += 2) n += has_target(i) && has_target(i + 1);
  return n;
}

int64_t step_pair_count(const std::vector<std::vector<int32_t>>& targets, int64_t S, const Communicator& dp) {
  int64_t n = 0;
  for (const auto& t : targets) n += count_pairs(t, S);
  dp.all_reduce_sum(&n, 1);
  return n;
}

}  // namespace ff
