// Pipeline schedules as data (specs/parallelism-and-moe.md §4.1, §4.2): a pure function gives each
// stage its ordered list of forward/backward actions; the executor (train/pipeline.h) only walks
// it. Legend: P stages, p this stage, M micro-batches, V model chunks per stage (virtual stages:
// chunk v of stage p is virtual stage v P + p), g = P micro-batches per group.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ff {

enum class PipeOp : uint8_t { forward, backward };

struct PipeAction {
  PipeOp op;
  int32_t microbatch;
  int32_t chunk;
  bool operator==(const PipeAction&) const = default;
};

// Warm-up forwards before the first backward: 1F1B min(P - p - 1, M); interleaved
// min(M V, 2 (P - p - 1) + (V - 1) P).
int64_t pipeline_warmup(int64_t P, int64_t p, int64_t M, int64_t V);

// V = 1: one-forward-one-backward (1F1B). V > 1: interleaved, which needs M % P == 0.
std::vector<PipeAction> pipeline_schedule(int64_t P, int64_t p, int64_t M, int64_t V);

// "F0.0 F1.0 B0.0 ..." (op, micro-batch, chunk), for tests and the debug log.
std::string schedule_string(const std::vector<PipeAction>& actions);

}  // namespace ff
