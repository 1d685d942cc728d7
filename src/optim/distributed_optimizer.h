// Distributed optimizer (ZeRO-1; specs/parallelism-and-moe.md §5.1-5.3). Each parameter region of
// the store (dense, expert) is one flat buffer padded to a multiple of its data-parallel group
// size P and cut into P equal shards; rank k of the group owns shard k. One step:
//   1. TP-replicated gradients are summed over TP under sequence parallelism (§5.4 b);
//   2. gradients are pre-scaled by 1 / (DP x CP) and reduce-scattered: each rank receives the
//      summed gradient of its shard only (dense over DP x CP, experts over expert-DP);
//   3. the global gradient norm is the sum of the owned shards' squares over all ranks (each
//      element is owned once; TP replicas are counted on TP rank 0 only), then clipping;
//   4. AdamW updates the owned shard (Adam moments exist for the shard only: optimizer memory per
//      rank drops by P);
//   5. every rank all-gathers the updated shards, so all replicas hold the new parameters.
// With fp32 training the parameters are the master weights; the result equals plain AdamW after
// an all-reduce, up to the order of the fp32 sums.
#pragma once
#include <vector>

#include "core/param.h"
#include "optim/optimizer.h"
#include "parallel/grid.h"

namespace ff {

class DistributedAdamW {
 public:
  DistributedAdamW(ParamStore& params, const OptimizerConfig& cfg, const ParallelGrid& grid);
  // Reduces the accumulated gradients, updates and gathers the parameters. Returns the pre-clip
  // global gradient norm.
  double step(double lr);
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }
  // Checkpoints: the whole moments in the store's flat layout (collective over each region's group;
  // a temporary of twice the parameters), and back: this rank keeps its shard of them.
  void gather_moments(std::vector<float>& exp_avg, std::vector<float>& exp_avg_sq) const;
  void scatter_moments(const std::vector<float>& exp_avg, const std::vector<float>& exp_avg_sq);
  // Bytes of optimizer state held by this rank (Adam moments of the owned shards).
  int64_t state_bytes() const;

 private:
  struct Region {
    bool expert = false;
    const Communicator* group = nullptr;
    int64_t begin = 0, end = 0;              // in the store's flat buffers
    int64_t shard_begin = 0, shard_len = 0;  // owned shard, in the store's flat buffers
    std::vector<float> grad, m, v;           // [shard_len]
  };
  ParamStore& params_;
  OptimizerConfig cfg_;
  const ParallelGrid& grid_;
  Region regions_[2];
  int64_t t_ = 0;
};

}  // namespace ff
