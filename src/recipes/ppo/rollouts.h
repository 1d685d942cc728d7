// PPO's rollouts as training micro-batches (recipes/ppo/ppo.h): each prompt with its generated
// response (and the EOS token when it ended), padded to model.seq_len, the response rows
// targeted. Row t of a sequence predicts its token t + 1, so the response of a prompt of P tokens
// and a sequence of L tokens takes rows [P - 1, L - 1).
#pragma once
#include <cstdint>
#include <vector>

#include "recipes/ppo/advantages.h"
#include "train/generation.h"
#include "train/objective.h"

namespace ff {

struct Rollouts {
  int64_t B = 0, S = 0;  // sequences per micro-batch, rows per sequence
  std::vector<std::vector<int32_t>> tokens, targets;  // per micro-batch [B * S]; targets -1 off the response
  std::vector<std::vector<ResponseSpan>> spans;       // per micro-batch [B]
  std::vector<std::vector<uint8_t>> ended;            // per micro-batch [B]: the response ended with EOS
  int64_t micro_batches() const { return static_cast<int64_t>(tokens.size()); }
};

// The sequences `which` of prompts / generated, in that order, in micro-batches of B (their
// number a multiple of B). Each prompt + response (+ eod) must fit in S tokens.
Rollouts pack_rollouts(const std::vector<std::vector<int32_t>>& prompts, const std::vector<Generated>& generated,
                       const std::vector<int64_t>& which, int64_t B, int64_t S, int32_t eod);
// This data-parallel replica's sequences of a rollout batch of `total`: optimizer step j takes
// sequences [j G, (j + 1) G) of the batch, G = DP x per_replica, and replica r the r-th
// per_replica of them, so every layout trains each step on the same sequences.
std::vector<int64_t> replica_sequences(int64_t total, int64_t dp, int64_t rank, int64_t per_replica);

// Row n of a rank's HeadRows, in the micro-batch's [B * S] layout (under context parallelism the
// rank holds some positions of each sequence: HeadRows::positions says which).
inline int64_t rollout_row(const HeadRows& in, int64_t n) {
  const int64_t S_full = in.S * (in.cp ? in.cp->size() : 1);
  return n / in.S * S_full + in.positions[n];
}

// Records each row's head value (HeadRows::value: log p(target), or a value head's output) into
// out [B * S] at the row's place in its sequence, 0 on rows without a target; complete over the
// CP group. Loss 0, no gradient: a scoring pass.
class RowValues : public TokenObjective {
 public:
  explicit RowValues(std::vector<float>& out) : out_(out) {}
  ObjectiveValue evaluate(const HeadRows& in, float* dlogp) const override;

 private:
  std::vector<float>& out_;
};

}  // namespace ff
