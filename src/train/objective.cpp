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

Distillation::Distillation(DecoderLM& teacher, DecoderLM::MicroBatch& teacher_mb, double total_tokens,
                           float temperature)
    : teacher_(teacher), mb_(teacher_mb), total_(total_tokens), tau_(temperature) {
  FF_CHECK(temperature > 0, "distillation temperature %g: must be > 0", temperature);
}

ObjectiveValue Distillation::evaluate(const StudentLogits& in, float* dlogits) const {
  const HeadRows& r = in.rows;
  const int64_t N = r.B * r.S;
  // The teacher's logits of the same rows: a forward over the same tokens, no targets (all rows).
  teacher_.set_training(false);
  teacher_.forward(mb_, in.tokens, nullptr, r.B, in.S_full, in.positions);
  teacher_.set_training(true);
  FF_CHECK(teacher_.vocab_shard() == in.Vl, "the teacher's vocabulary shard (%lld) differs from the student's (%lld): "
           "teacher and student need the same model.vocab_size", (long long)teacher_.vocab_shard(), (long long)in.Vl);
  const float* zt = teacher_.logits(mb_);
  std::vector<float> kl(static_cast<size_t>(N)), lse_s(kl.size()), lse_t(kl.size()), g(kl.size());
  vocab_parallel_kl_forward(kl.data(), lse_s.data(), lse_t.data(), in.logits, zt, N, in.Vl, tau_, in.tp);
  // loss = tau^2 / T sum over rows with a target of kl: its gradient per row is g = tau^2 / T.
  const float w = total_ > 0 ? static_cast<float>(tau_ * tau_ / total_) : 0.0f;
  double sum_count[2] = {0, 0};
  for (int64_t n = 0; n < N; ++n) {
    const bool valid = r.targets[n] >= 0;
    g[static_cast<size_t>(n)] = valid ? w : 0.0f;
    if (valid) {
      sum_count[0] += kl[static_cast<size_t>(n)];
      sum_count[1] += 1;
    }
  }
  vocab_parallel_kl_backward(dlogits, in.logits, zt, lse_s.data(), lse_t.data(), g.data(), N, in.Vl, tau_);
  if (r.cp) r.cp->all_reduce_sum(sum_count, 2);
  return {total_ > 0 ? tau_ * tau_ * sum_count[0] / total_ : 0.0, static_cast<int64_t>(sum_count[1])};
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
