// Pipeline schedule tables, without MPI: each forward precedes its backward, the warm-up matches
// the formula, the spec's examples come out, and a simulation of all stages together (a message
// is available once its producer ran) finishes: no two stages wait on each other.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "core/check.h"
#include "parallel/schedule.h"

namespace ff {
namespace {

TEST(Schedule, OneFOneBMatchesTheSpec) {
  // P = 4, M = 6: stage 0 warms up with 3 forwards, the last stage with none.
  EXPECT_EQ(schedule_string(pipeline_schedule(4, 0, 6, 1)),
            "F0.0 F1.0 F2.0 F3.0 B0.0 F4.0 B1.0 F5.0 B2.0 B3.0 B4.0 B5.0");
  EXPECT_EQ(schedule_string(pipeline_schedule(4, 3, 6, 1)),
            "F0.0 B0.0 F1.0 B1.0 F2.0 B2.0 F3.0 B3.0 F4.0 B4.0 F5.0 B5.0");
  EXPECT_EQ(schedule_string(pipeline_schedule(4, 0, 2, 1)), "F0.0 F1.0 B0.0 B1.0");  // M < P
}

TEST(Schedule, InterleavedOrderMatchesTheSpecExample) {
  // §4.2, P = 2, V = 2, M = 4: forward order (0,c0)(1,c0)(0,c1)(1,c1)(2,c0)(3,c0)(2,c1)(3,c1).
  auto s = pipeline_schedule(2, 1, 4, 2);
  std::vector<PipeAction> forwards;
  for (const auto& a : s)
    if (a.op == PipeOp::forward) forwards.push_back(a);
  std::string order;
  for (const auto& a : forwards) order += std::to_string(a.microbatch) + std::to_string(a.chunk) + " ";
  EXPECT_EQ(order, "00 10 01 11 20 30 21 31 ");
  EXPECT_THROW(pipeline_schedule(2, 0, 3, 2), Error);  // M not a multiple of P
}

// Runs all stages' tables against each other. F(mb, vs) needs F(mb, vs - 1); B(mb, vs) needs
// F(mb, vs) and B(mb, vs + 1). Each round, every stage runs its next action if it can.
bool simulate(int64_t P, int64_t M, int64_t V) {
  std::vector<std::vector<PipeAction>> tables;
  for (int64_t p = 0; p < P; ++p) tables.push_back(pipeline_schedule(P, p, M, V));
  std::vector<size_t> next(static_cast<size_t>(P), 0);
  std::set<std::tuple<int, int, int>> done;  // (op, mb, virtual stage)
  const int64_t last_vs = P * V - 1;
  for (bool progress = true; progress;) {
    progress = false;
    for (int64_t p = 0; p < P; ++p) {
      auto& n = next[static_cast<size_t>(p)];
      if (n == tables[static_cast<size_t>(p)].size()) continue;
      const PipeAction& a = tables[static_cast<size_t>(p)][n];
      const int vs = static_cast<int>(a.chunk * P + p);
      bool ready = a.op == PipeOp::forward ? (vs == 0 || done.count({0, a.microbatch, vs - 1}))
                                           : (done.count({0, a.microbatch, vs}) &&
                                              (vs == last_vs || done.count({1, a.microbatch, vs + 1})));
      if (ready) {
        done.insert({a.op == PipeOp::forward ? 0 : 1, a.microbatch, vs});
        ++n;
        progress = true;
      }
    }
  }
  for (int64_t p = 0; p < P; ++p)
    if (next[static_cast<size_t>(p)] != tables[static_cast<size_t>(p)].size()) return false;
  return true;
}

TEST(Schedule, EveryStageForwardsBeforeBackwardAndNothingDeadlocks) {
  for (int64_t P = 1; P <= 4; ++P)
    for (int64_t V = 1; V <= 3; ++V)
      for (int64_t M = 1; M <= 8; ++M) {
        if (V > 1 && M % P != 0) continue;
        for (int64_t p = 0; p < P; ++p) {
          auto s = pipeline_schedule(P, p, M, V);
          ASSERT_EQ(s.size(), static_cast<size_t>(2 * M * V));
          std::set<std::pair<int, int>> fwd, bwd;
          int64_t leading_forwards = 0;
          bool seen_backward = false;
          int64_t in_flight = 0, max_in_flight = 0;
          for (const auto& a : s) {
            std::pair<int, int> key{a.microbatch, a.chunk};
            if (a.op == PipeOp::forward) {
              EXPECT_TRUE(fwd.insert(key).second);
              if (!seen_backward) ++leading_forwards;
              max_in_flight = std::max(max_in_flight, ++in_flight);
            } else {
              EXPECT_TRUE(fwd.count(key)) << "backward before its forward: P=" << P << " p=" << p;
              EXPECT_TRUE(bwd.insert(key).second);
              seen_backward = true;
              --in_flight;
            }
          }
          // The forwards before the first backward: the warm-up plus the first steady forward.
          EXPECT_EQ(leading_forwards, std::min(M * V, pipeline_warmup(P, p, M, V) + 1));
          EXPECT_LE(max_in_flight, pipeline_warmup(P, p, M, V) + 1);
        }
        EXPECT_TRUE(simulate(P, M, V)) << "deadlock P=" << P << " M=" << M << " V=" << V;
      }
}

}  // namespace
}  // namespace ff
