#include "recipes/ppo/advantages.h"

#include <cmath>

#include "core/check.h"

namespace ff {

namespace {
void check_span(ResponseSpan span, int64_t S) {
  FF_CHECK(span.first >= 0 && span.end <= S, "a response span [%lld, %lld) outside the sequence's %lld rows",
           (long long)span.first, (long long)span.end, (long long)S);
}
}  // namespace

void kl_penalized_rewards(float* rewards, const float* logp, const float* logp_ref, ResponseSpan span, int64_t S,
                          double score, double beta, bool absolute_kl) {
  check_span(span, S);
  for (int64_t t = 0; t < S; ++t) rewards[t] = 0.0f;
  for (int64_t t = span.first; t < span.end; ++t) {
    const double k = double(logp[t]) - logp_ref[t];
    rewards[t] = static_cast<float>(-beta * (absolute_kl ? std::fabs(k) : k));
  }
  if (span.end > span.first) rewards[span.end - 1] += static_cast<float>(score);
}

void generalized_advantages(float* adv, float* returns, const float* rewards, const float* values, ResponseSpan span,
                            int64_t S, double gamma, double lambda) {
  check_span(span, S);
  for (int64_t t = 0; t < S; ++t) adv[t] = returns[t] = 0.0f;
  double next_value = 0, next_adv = 0;  // beyond the response's end: nothing
  for (int64_t t = span.end; t-- > span.first;) {
    const double delta = rewards[t] + gamma * next_value - values[t];
    const double a = delta + gamma * lambda * next_adv;
    adv[t] = static_cast<float>(a);
    returns[t] = static_cast<float>(a + values[t]);
    next_value = values[t];
    next_adv = a;
  }
}

MaskedMoments whiten_advantages(std::vector<std::vector<float>>& adv, const std::vector<std::vector<float>>& mask,
                                const Communicator& dp) {
  FF_CHECK(adv.size() == mask.size(), "whiten_advantages: %zu micro-batches of advantages, %zu of masks", adv.size(),
           mask.size());
  double s[2] = {0, 0};  // sum, count
  for (size_t m = 0; m < adv.size(); ++m)
    for (size_t i = 0; i < adv[m].size(); ++i)
      if (mask[m][i] > 0) {
        s[0] += adv[m][i];
        s[1] += 1;
      }
  dp.all_reduce_sum(s, 2);
  MaskedMoments mo;
  mo.count = s[1];
  if (mo.count == 0) return mo;
  mo.mean = s[0] / mo.count;
  double sq = 0;  // a second pass: the squared deviations from the global mean
  for (size_t m = 0; m < adv.size(); ++m)
    for (size_t i = 0; i < adv[m].size(); ++i)
      if (mask[m][i] > 0) sq += (adv[m][i] - mo.mean) * (adv[m][i] - mo.mean);
  dp.all_reduce_sum(&sq, 1);
  mo.variance = sq / mo.count;
  const double inv = 1.0 / std::sqrt(mo.variance + 1e-8);
  for (size_t m = 0; m < adv.size(); ++m)
    for (size_t i = 0; i < adv[m].size(); ++i)
      if (mask[m][i] > 0) adv[m][i] = static_cast<float>((adv[m][i] - mo.mean) * inv);
  return mo;
}

}  // namespace ff
