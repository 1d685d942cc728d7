#include "train/objective.h"

#include <algorithm>
#include <cmath>

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

Distillation::Distillation(DecoderLM& teacher, double total_tokens, const DistillationOptions& o)
    : teacher_(teacher), total_(total_tokens), o_(o) {
  FF_CHECK(o.temperature > 0, "distillation temperature %g: must be > 0", o.temperature);
}

namespace {
// 1 - cos(p, t) of one row and its gradient with respect to p:
//   d (1 - cos) / d p = cos p / |p|^2 - t / (|p| |t|).
double one_minus_cos(const float* p, const float* t, int64_t W, double* dp) {
  double pp = 0, tt = 0, pt = 0;
  for (int64_t i = 0; i < W; ++i) {
    pp += double(p[i]) * p[i];
    tt += double(t[i]) * t[i];
    pt += double(p[i]) * t[i];
  }
  const double norms = std::max(std::sqrt(pp * tt), 1e-12), c = pt / norms;
  for (int64_t i = 0; i < W; ++i) dp[i] = (pp > 0 ? c * p[i] / pp : 0.0) - t[i] / norms;
  return 1.0 - c;
}
}  // namespace

ObjectiveValue Distillation::evaluate(const StudentLogits& in, float* dlogits, float* dhidden) const {
  const HeadRows& r = in.rows;
  const int64_t N = r.B * r.S;
  const float tau = o_.temperature;
  FF_CHECK(in.companion_logits != nullptr, "distillation: the teacher's logits of this micro-batch are missing");
  FF_CHECK(in.companion_Vl == in.Vl, "the teacher's vocabulary shard (%lld) differs from the student's (%lld): "
           "teacher and student need the same model.vocab_size", (long long)in.companion_Vl, (long long)in.Vl);
  const float* zt = in.companion_logits;
  std::vector<float> kl(static_cast<size_t>(N)), lse_s(kl.size()), lse_t(kl.size()), g(kl.size());
  vocab_parallel_kl_forward(kl.data(), lse_s.data(), lse_t.data(), in.logits, zt, N, in.Vl, tau, in.tp);
  // The cosine term's rows (the same on every TP rank: the hidden states are whole there).
  const int64_t W = in.hidden_width;
  std::vector<double> dcos;
  if (o_.hidden_cosine) {
    FF_CHECK(in.hidden && in.companion_hidden && in.companion_hidden_width == W, "distillation's hidden cosine: the "
             "student's hidden state (width %lld) must meet the teacher's (width %lld)", (long long)W,
             (long long)in.companion_hidden_width);
    dcos.assign(static_cast<size_t>(N * W), 0.0);
  }
  // Over the micro-batch's rows with a target (complete over CP): sum of KL, of -log p(target),
  // of 1 - cos, and the count.
  double sums[4] = {0, 0, 0, 0};
  for (int64_t n = 0; n < N; ++n)
    if (r.targets[n] >= 0) {
      sums[0] += kl[static_cast<size_t>(n)];
      sums[1] -= r.value[n];
      if (o_.hidden_cosine)
        sums[2] += one_minus_cos(in.hidden + n * W, in.companion_hidden + n * W, W, dcos.data() + n * W);
      sums[3] += 1;
    }
  if (r.cp) r.cp->all_reduce_sum(sums, 4);
  const double inv_total = total_ > 0 ? 1.0 / total_ : 0.0;
  const double kd = tau * tau * sums[0] * inv_total, ce = sums[1] * inv_total, cos = sums[2] * inv_total;
  // The detached ratios (constants for the gradient).
  const double c = o_.hidden_cosine && cos > 0 ? kd / cos : 0.0;
  const double kd_all = kd + c * cos;
  const double ratio = o_.keep_lm_loss ? (kd_all > 0 ? ce / kd_all : 0.0) : 1.0;
  // d (ratio tau^2 / T sum kl) / d kl[n] = ratio tau^2 / T on the rows with a target.
  const float w = static_cast<float>(ratio * tau * tau * inv_total);
  for (int64_t n = 0; n < N; ++n) g[static_cast<size_t>(n)] = r.targets[n] >= 0 ? w : 0.0f;
  vocab_parallel_kl_backward(dlogits, in.logits, zt, lse_s.data(), lse_t.data(), g.data(), N, in.Vl, tau);
  if (o_.hidden_cosine)
    for (size_t i = 0; i < dcos.size(); ++i) dhidden[i] = static_cast<float>(ratio * c * inv_total * dcos[i]);
  if (o_.keep_lm_loss) {
    // + d CE / d z = (softmax(z) - onehot(target)) / T on the rows with a target, on this shard.
    std::vector<float> dce(static_cast<size_t>(N * in.Vl)), dloss(kl.size());
    for (int64_t n = 0; n < N; ++n) dloss[static_cast<size_t>(n)] = r.targets[n] >= 0 ? static_cast<float>(inv_total) : 0.0f;
    vocab_parallel_cross_entropy_backward(dce.data(), in.logits, in.lse, r.targets, dloss.data(), N, in.Vl, in.v0);
    for (size_t i = 0; i < dce.size(); ++i) dlogits[i] += dce[i];
  }
  return {o_.keep_lm_loss ? ce + ratio * kd_all : kd_all, static_cast<int64_t>(sums[3])};
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
