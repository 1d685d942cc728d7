#include "recipes/ppo/rollouts.h"

#include "core/check.h"

namespace ff {

std::vector<int64_t> replica_sequences(int64_t total, int64_t dp, int64_t rank, int64_t per_replica) {
  std::vector<int64_t> out;
  for (int64_t step = 0; step * dp * per_replica < total; ++step)
    for (int64_t i = 0; i < per_replica; ++i) out.push_back((step * dp + rank) * per_replica + i);
  return out;
}

Rollouts pack_rollouts(const std::vector<std::vector<int32_t>>& prompts, const std::vector<Generated>& generated,
                       const std::vector<int64_t>& which, int64_t B, int64_t S, int32_t eod) {
  const int64_t count = static_cast<int64_t>(which.size());
  FF_CHECK(count % B == 0 && generated.size() == prompts.size(), "pack_rollouts: %lld sequences in micro-batches of "
           "%lld", (long long)count, (long long)B);
  for (int64_t i : which)
    FF_CHECK(i >= 0 && i < static_cast<int64_t>(generated.size()), "pack_rollouts: sequence %lld of %zu", (long long)i,
             generated.size());
  Rollouts r;
  r.B = B;
  r.S = S;
  for (int64_t m = 0; m < count / B; ++m) {
    std::vector<int32_t> tokens(static_cast<size_t>(B * S), 0), targets(tokens.size(), -1);
    std::vector<ResponseSpan> spans;
    std::vector<uint8_t> ended;
    for (int64_t b = 0; b < B; ++b) {
      const size_t i = static_cast<size_t>(which[static_cast<size_t>(m * B + b)]);
      std::vector<int32_t> seq = prompts[i];
      seq.insert(seq.end(), generated[i].tokens.begin(), generated[i].tokens.end());
      const bool eos = generated[i].finish == "eos";
      if (eos) seq.push_back(eod);
      const int64_t P = static_cast<int64_t>(prompts[i].size()), L = static_cast<int64_t>(seq.size());
      FF_CHECK(P >= 1 && L <= S, "a rollout of %lld tokens (prompt %lld) does not fit model.seq_len = %lld",
               (long long)L, (long long)P, (long long)S);
      for (int64_t t = 0; t < L; ++t) tokens[static_cast<size_t>(b * S + t)] = seq[static_cast<size_t>(t)];
      for (int64_t t = P - 1; t < L - 1; ++t) targets[static_cast<size_t>(b * S + t)] = seq[static_cast<size_t>(t + 1)];
      spans.push_back({P - 1, L - 1});
      ended.push_back(eos);
    }
    r.tokens.push_back(std::move(tokens));
    r.targets.push_back(std::move(targets));
    r.spans.push_back(std::move(spans));
    r.ended.push_back(std::move(ended));
  }
  return r;
}

ObjectiveValue RowValues::evaluate(const HeadRows& in, float* dlogp) const {
  const int64_t cp = in.cp ? in.cp->size() : 1;
  out_.assign(static_cast<size_t>(in.B * in.S * cp), 0.0f);
  for (int64_t n = 0; n < in.B * in.S; ++n) {
    dlogp[n] = 0.0f;
    if (in.targets[n] >= 0) out_[static_cast<size_t>(rollout_row(in, n))] = in.value[n * in.width];
  }
  // Each row is held by one CP rank, zeros elsewhere: the sum completes the rows.
  if (in.cp) in.cp->all_reduce_sum(out_.data(), static_cast<int64_t>(out_.size()));
  return {};
}

}  // namespace ff
