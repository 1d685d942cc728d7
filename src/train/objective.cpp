#include "train/objective.h"

#include "layers/vocab_parallel.h"

namespace ff {

ObjectiveValue TokenMeanCrossEntropy::evaluate(const HeadRows& in, float* dlogp) const {
  const int64_t rows = in.B * in.S;
  const float g = total_ > 0 ? static_cast<float>(-1.0 / total_) : 0.0f;
  double sum_count[2] = {0, 0};  // sum of logp and valid rows, over the CP ranks' rows
  for (int64_t n = 0; n < rows; ++n) {
    const bool valid = in.targets[n] >= 0;
    dlogp[n] = valid ? g : 0.0f;
    if (valid) {
      sum_count[0] += in.value[n];
      sum_count[1] += 1;
    }
  }
  if (in.cp) in.cp->all_reduce_sum(sum_count, 2);
  ObjectiveValue v;
  v.tokens = static_cast<int64_t>(sum_count[1]);
  v.loss = total_ > 0 ? -sum_count[0] / total_ : 0.0;
  return v;
}

Distillation::Distillation(DecoderLM& teacher, double total_tokens, float temperature, bool keep_lm_loss)
    : teacher_(teacher), total_(total_tokens), tau_(temperature), keep_lm_(keep_lm_loss) {
  FF_CHECK(temperature > 0, "distillation temperature %g: must be > 0", temperature);
}

ObjectiveValue Distillation::evaluate(const StudentLogits& in, float* dlogits) const {
  const HeadRows& r = in.rows;
  const int64_t N = r.B * r.S;
  FF_CHECK(in.companion_logits != nullptr, "distillation: the teacher's logits of this micro-batch are missing");
  FF_CHECK(in.companion_Vl == in.Vl, "the teacher's vocabulary shard (%lld) differs from the student's (%lld): "
           "teacher and student need the same model.vocab_size", (long long)in.companion_Vl, (long long)in.Vl);
  const float* zt = in.companion_logits;
  std::vector<float> kl(static_cast<size_t>(N)), lse_s(kl.size()), lse_t(kl.size()), g(kl.size());
  vocab_parallel_kl_forward(kl.data(), lse_s.data(), lse_t.data(), in.logits, zt, N, in.Vl, tau_, in.tp);
  // Over the micro-batch's rows with a target (complete over CP): sum of KL, of -log p(target),
  // and the count.
  double sums[3] = {0, 0, 0};
  for (int64_t n = 0; n < N; ++n)
    if (r.targets[n] >= 0) {
      sums[0] += kl[static_cast<size_t>(n)];
      sums[1] -= r.value[n];
      sums[2] += 1;
    }
  if (r.cp) r.cp->all_reduce_sum(sums, 3);
  const double inv_total = total_ > 0 ? 1.0 / total_ : 0.0;
  const double kd = tau_ * tau_ * sums[0] * inv_total, ce = sums[1] * inv_total;
  const double ratio = keep_lm_ ? (kd > 0 ? ce / kd : 0.0) : 1.0;  // detached: a constant for the gradient
  // d (ratio tau^2 / T sum kl) / d kl[n] = ratio tau^2 / T on the rows with a target.
  const float w = static_cast<float>(ratio * tau_ * tau_ * inv_total);
  for (int64_t n = 0; n < N; ++n) g[static_cast<size_t>(n)] = r.targets[n] >= 0 ? w : 0.0f;
  vocab_parallel_kl_backward(dlogits, in.logits, zt, lse_s.data(), lse_t.data(), g.data(), N, in.Vl, tau_);
  if (keep_lm_) {
    // + d CE / d z = (softmax(z) - onehot(target)) / T on the rows with a target, on this shard.
    std::vector<float> dce(static_cast<size_t>(N * in.Vl)), dloss(kl.size());
    for (int64_t n = 0; n < N; ++n) dloss[static_cast<size_t>(n)] = r.targets[n] >= 0 ? static_cast<float>(inv_total) : 0.0f;
    vocab_parallel_cross_entropy_backward(dce.data(), in.logits, in.lse, r.targets, dloss.data(), N, in.Vl, in.v0);
    for (size_t i = 0; i < dce.size(); ++i) dlogits[i] += dce[i];
  }
  return {keep_lm_ ? ce + ratio * kd : kd, static_cast<int64_t>(sums[2])};
}

int64_t count_targets(const std::vector<int32_t>& targets) {
  int64_t n = 0;
  for (int32_t t : targets) n += t >= 0;
  return n;
}

int64_t step_target_count(const std::vector<std::vector<int32_t>>& targets, const Communicator& dp) {
  int64_t n = 0;
  for (const auto& t : targets) n += count_targets(t);
  dp.all_reduce_sum(&n, 1);
  return n;
}

namespace {
// The micro-batch's valid targets (over the CP ranks).
int64_t micro_batch_targets(const HeadRows& in) {
  int64_t n = 0;
  for (int64_t r = 0; r < in.B * in.S; ++r) n += in.targets[r] >= 0;
  if (in.cp) in.cp->all_reduce_sum(&n, 1);
  return n;
}
}  // namespace

ForwardResult forward_mean_ce(DecoderLM& model, DecoderLM::MicroBatch& mb, const int32_t* tokens,
                              const int32_t* targets, int64_t B, int64_t S) {
  ForwardResult r = model.forward(mb, tokens, targets, B, S);
  if (!targets) return r;
  const HeadRows in = model.head_rows(mb);
  std::vector<float> dlogp(static_cast<size_t>(in.B * in.S));
  const ObjectiveValue v = TokenMeanCrossEntropy(static_cast<double>(micro_batch_targets(in))).evaluate(in, dlogp.data());
  r.loss = v.loss;
  r.valid_tokens = v.tokens;
  return r;
}

void backward_mean_ce(DecoderLM& model, DecoderLM::MicroBatch& mb, float scale) {
  const HeadRows in = model.head_rows(mb);
  std::vector<float> dlogp(static_cast<size_t>(in.B * in.S));
  TokenMeanCrossEntropy(static_cast<double>(micro_batch_targets(in))).evaluate(in, dlogp.data());
  model.backward(mb, dlogp.data(), scale, scale);
}

std::vector<double> last_row_values(const HeadRows& in, std::vector<int64_t>& at) {
  const int64_t B = in.B, S = in.S, K = in.width;
  std::vector<double> last(static_cast<size_t>(B), -1.0), value(static_cast<size_t>(B * K), 0.0);
  at.assign(static_cast<size_t>(B), -1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      const int64_t row = b * S + s;
      const double pos = in.positions ? in.positions[row] : static_cast<double>(s);
      if (in.targets[row] >= 0 && pos > last[static_cast<size_t>(b)]) {
        last[static_cast<size_t>(b)] = pos;
        at[static_cast<size_t>(b)] = row;
      }
    }
  const std::vector<double> mine = last;
  if (in.cp) in.cp->all_reduce_max(last.data(), B);
  for (int64_t b = 0; b < B; ++b) {
    const size_t i = static_cast<size_t>(b);
    if (at[i] < 0 || mine[i] != last[i]) {
      at[i] = -1;
      continue;
    }
    for (int64_t k = 0; k < K; ++k) value[i * static_cast<size_t>(K) + static_cast<size_t>(k)] = in.value[at[i] * K + k];
  }
  if (in.cp) in.cp->all_reduce_sum(value.data(), B * K);
  return value;
}

}  // namespace ff
