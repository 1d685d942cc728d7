// The all-to-all dispatcher on the hand-worked example of specs/parallelism-and-moe.md §7.4:
// EP = 2, ETP = 1, E = 4 (rank 0 owns e0, e1; rank 1 owns e2, e3), K = 2, N = 4 tokens per rank.
// Token t of rank r carries the value 10 r + t, so every received row names its source.
#include <gtest/gtest.h>

#include "layers/moe/alltoall_dispatcher.h"
#include "layers/moe/dedup_dispatcher.h"
#include "parallel/grid.h"

namespace ff {
namespace {

TEST(AllToAllDispatcher, SpecWorkedExample) {
  Communicator world = Communicator::world();
  if (world.size() != 2) GTEST_SKIP() << "the example has two EP ranks";
  ParallelConfig pc;
  pc.ep = 2;
  ParallelGrid grid(world, pc);
  const int r = world.rank();
  // Rank 0 routes t0->{0,2}, t1->{1,2}, t2->{0,3}, t3->{2,3}; rank 1 t0->{1,3}, t1->{0,1}, t2->{2,3}, t3->{0,2}.
  const std::vector<int32_t> idx = r == 0 ? std::vector<int32_t>{0, 2, 1, 2, 0, 3, 2, 3}
                                          : std::vector<int32_t>{1, 3, 0, 1, 2, 3, 0, 2};
  const std::vector<float> probs(8, 0.5f);
  std::vector<float> x(4);
  for (int t = 0; t < 4; ++t) x[t] = static_cast<float>(10 * r + t);
  Routing routing;
  routing.topk_idx = idx.data();
  routing.topk_probs = probs.data();
  AllToAllDispatcher d(grid.ep(), grid.etp(), grid.etp_ep(), 4, 2, 1);
  DispatchState st;
  Arena arena;
  d.dispatch(st, x.data(), routing, 4, arena);
  auto rows = [&] { return std::vector<float>(st.rows.f32(), st.rows.f32() + st.rows.numel()); };
  if (r == 0) {
    EXPECT_EQ(st.plan.tokens_per_expert, (std::vector<int64_t>{2, 1, 3, 2}));
    EXPECT_EQ(st.plan.row_token, (std::vector<int32_t>{0, 2, 1, 0, 1, 3, 2, 3}));
    EXPECT_EQ(st.send_rows, (std::vector<int64_t>{3, 5}));  // input_splits
    EXPECT_EQ(st.peer_expert_rows, (std::vector<int64_t>{2, 1, 2, 2}));  // G
    EXPECT_EQ(st.recv_rows, (std::vector<int64_t>{3, 4}));  // output_splits
    EXPECT_EQ(st.tokens_per_local_expert, (std::vector<int64_t>{4, 3}));
    // e0: (0,t0)(0,t2)(1,t1)(1,t3); e1: (0,t1)(1,t0)(1,t1).
    EXPECT_EQ(rows(), (std::vector<float>{0, 2, 11, 13, 1, 10, 11}));
  } else {
    EXPECT_EQ(st.plan.tokens_per_expert, (std::vector<int64_t>{2, 2, 2, 2}));
    EXPECT_EQ(st.plan.row_token, (std::vector<int32_t>{1, 3, 0, 1, 2, 3, 0, 2}));
    EXPECT_EQ(st.send_rows, (std::vector<int64_t>{4, 4}));
    EXPECT_EQ(st.peer_expert_rows, (std::vector<int64_t>{3, 2, 2, 2}));
    EXPECT_EQ(st.recv_rows, (std::vector<int64_t>{5, 4}));
    EXPECT_EQ(st.tokens_per_local_expert, (std::vector<int64_t>{5, 4}));
    EXPECT_EQ(rows(), (std::vector<float>{0, 1, 3, 12, 13, 2, 3, 10, 12}));
  }
  // Combine of the rows unchanged returns each token times its number of routed copies (K = 2).
  std::vector<float> y(4);
  d.combine(y.data(), st.rows.f32(), st, 4);
  for (int t = 0; t < 4; ++t) EXPECT_EQ(y[t], 2 * x[t]);
}

// The same routing through the token all-to-all: each token goes once to each rank that owns one
// of its experts (rank 0's t3 -> {2, 3} is one row to rank 1, not two), and the rank expands it
// into the same expert rows, in the same order, as the per-expert dispatcher.
TEST(DedupAllToAllDispatcher, SpecWorkedExample) {
  Communicator world = Communicator::world();
  if (world.size() != 2) GTEST_SKIP() << "the example has two EP ranks";
  ParallelConfig pc;
  pc.ep = 2;
  ParallelGrid grid(world, pc);
  const int r = world.rank();
  const std::vector<int32_t> idx = r == 0 ? std::vector<int32_t>{0, 2, 1, 2, 0, 3, 2, 3}
                                          : std::vector<int32_t>{1, 3, 0, 1, 2, 3, 0, 2};
  std::vector<float> probs(8);
  for (int i = 0; i < 8; ++i) probs[i] = 0.1f * static_cast<float>(i + 1);
  std::vector<float> x(4);
  for (int t = 0; t < 4; ++t) x[t] = static_cast<float>(10 * r + t);
  Routing routing;
  routing.topk_idx = idx.data();
  routing.topk_probs = probs.data();
  DedupAllToAllDispatcher d(grid.ep(), grid.etp(), grid.etp_ep(), 4, 2, 1);
  AllToAllDispatcher per_expert(grid.ep(), grid.etp(), grid.etp_ep(), 4, 2, 1);
  DispatchState st, ref;
  Arena arena;
  d.dispatch(st, x.data(), routing, 4, arena);
  per_expert.dispatch(ref, x.data(), routing, 4, arena);
  // Tokens sent per rank: rank 0 t0, t1, t2 to itself and t0 .. t3 to rank 1 (t3 once); rank 1
  // t0, t1, t3 to rank 0 and t0, t2, t3 to itself.
  EXPECT_EQ(st.send_rows, r == 0 ? (std::vector<int64_t>{3, 4}) : (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(d.sent_rows(st), r == 0 ? 4 : 3);
  EXPECT_EQ(per_expert.sent_rows(ref), r == 0 ? 5 : 4);
  EXPECT_EQ(st.tokens_per_local_expert, ref.tokens_per_local_expert);
  auto rows = [](const DispatchState& s) { return std::vector<float>(s.rows.f32(), s.rows.f32() + s.rows.numel()); };
  auto row_probs = [](const DispatchState& s) {
    return std::vector<float>(s.row_probs.f32(), s.row_probs.f32() + s.row_probs.numel());
  };
  EXPECT_EQ(rows(st), rows(ref));
  EXPECT_EQ(row_probs(st), row_probs(ref));
  // Combine of the rows unchanged: each token times its number of routed copies (K = 2).
  std::vector<float> y(4);
  d.combine(y.data(), st.rows.f32(), st, 4);
  for (int t = 0; t < 4; ++t) EXPECT_EQ(y[t], 2 * x[t]);
  // Backward: row gradients = the rows' values, prob gradients = 1 per row: each token's dx is
  // its copies' sum (2 x), each slot's prob gradient 1.
  std::vector<float> dx(4, 0.0f), dprobs(8, 0.0f), ones(static_cast<size_t>(st.rows.numel()), 1.0f);
  d.dispatch_backward(dx.data(), dprobs.data(), st.rows.f32(), ones.data(), st, 4);
  for (int t = 0; t < 4; ++t) EXPECT_EQ(dx[t], 2 * x[t]);
  for (float g : dprobs) EXPECT_EQ(g, 1.0f);
}

}  // namespace
}  // namespace ff
