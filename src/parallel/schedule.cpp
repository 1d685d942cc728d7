#include "parallel/schedule.h"

#include <algorithm>

#include "core/check.h"

namespace ff {

int64_t pipeline_warmup(int64_t P, int64_t p, int64_t M, int64_t V) {
  if (V == 1) return std::min(P - p - 1, M);
  return std::min(M * V, 2 * (P - p - 1) + (V - 1) * P);
}

namespace {

// Interleaved order (§4.2): virtual step k -> micro-batch and chunk. Micro-batches go in groups of
// P; within a group chunk 0 runs for all of them, then chunk 1, ... Backward runs the chunks in
// reverse.
PipeAction virtual_step(int64_t k, int64_t P, int64_t V, PipeOp op) {
  const int64_t group = k / (P * V), in_group = k % (P * V);
  const int64_t chunk = in_group / P, mb = group * P + in_group % P;
  return {op, static_cast<int32_t>(mb), static_cast<int32_t>(op == PipeOp::forward ? chunk : V - 1 - chunk)};
}

}  // namespace

std::vector<PipeAction> pipeline_schedule(int64_t P, int64_t p, int64_t M, int64_t V) {
  FF_CHECK(P >= 1 && p >= 0 && p < P && M >= 1 && V >= 1, "pipeline_schedule: P=%lld p=%lld M=%lld V=%lld",
           (long long)P, (long long)p, (long long)M, (long long)V);
  FF_CHECK(V == 1 || M % P == 0, "the interleaved schedule needs the micro-batches per step (%lld) to be a multiple "
           "of the pipeline stages (%lld)", (long long)M, (long long)P);
  const int64_t total = M * V, warmup = pipeline_warmup(P, p, M, V);
  std::vector<PipeAction> out;
  int64_t f = 0, b = 0;
  for (; f < warmup; ++f) out.push_back(virtual_step(f, P, V, PipeOp::forward));
  // Steady state: one forward, then one backward, until every forward has run.
  for (; f < total; ++f, ++b) {
    out.push_back(virtual_step(f, P, V, PipeOp::forward));
    out.push_back(virtual_step(b, P, V, PipeOp::backward));
  }
  for (; b < total; ++b) out.push_back(virtual_step(b, P, V, PipeOp::backward));
  return out;
}

std::string schedule_string(const std::vector<PipeAction>& actions) {
  std::string s;
  for (const auto& a : actions)
    s += (s.empty() ? "" : " ") + std::string(a.op == PipeOp::forward ? "F" : "B") + std::to_string(a.microbatch) +
         "." + std::to_string(a.chunk);
  return s;
}

}  // namespace ff
