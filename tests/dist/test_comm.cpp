// Communication ops: the adjoint identity <fwd(x), y> = <x, bwd(y)> summed over ranks, for the
// all-to-all-v (its adjoint: the same call with counts swapped) and for all-gather /
// reduce-scatter (each other's adjoints), plus the chunk reorder of the A2A dispatcher.
#include <gtest/gtest.h>

#include "core/rng.h"
#include "layers/moe/alltoall_dispatcher.h"
#include "parallel/comm.h"
#include "parallel/grid.h"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace ff {
namespace {

double global_dot(const Communicator& c, const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  c.all_reduce_sum(&s, 1);
  return s;
}

std::vector<float> random(size_t n, uint64_t seed, int rank) {
  Rng r(seed, "adjoint", static_cast<uint64_t>(rank));
  std::vector<float> v(n);
  for (auto& x : v) x = r.normal();
  return v;
}

TEST(CommAdjoint, AllToAllV) {
  Communicator w = Communicator::world();
  const int P = w.size();
  const int64_t width = 3;
  // send_rows[q] on rank r = (r + 2q) % 4 (zeros included); recv is the transpose.
  std::vector<int64_t> send(P), recv(P);
  for (int q = 0; q < P; ++q) {
    send[q] = (w.rank() + 2 * q) % 4;
    recv[q] = (q + 2 * w.rank()) % 4;
  }
  int64_t ns = 0, nr = 0;
  for (int q = 0; q < P; ++q) ns += send[q], nr += recv[q];
  auto x = random(ns * width, 1, w.rank()), y = random(nr * width, 2, w.rank());
  std::vector<float> fx(nr * width), by(ns * width);
  w.all_to_all_v(fx.data(), recv, x.data(), send, width);
  w.all_to_all_v(by.data(), send, y.data(), recv, width);
  EXPECT_NEAR(global_dot(w, fx, y), global_dot(w, x, by), 1e-4);
}

TEST(CommAdjoint, AllGatherAndReduceScatter) {
  Communicator w = Communicator::world();
  const int64_t n = 5;
  auto x = random(n, 3, w.rank()), y = random(n * w.size(), 4, w.rank());
  std::vector<float> gx(n * w.size()), ry(n);
  w.all_gather(gx.data(), x.data(), n);
  w.reduce_scatter(ry.data(), y.data(), n);
  EXPECT_NEAR(global_dot(w, gx, y), global_dot(w, x, ry), 1e-4);
  // Closed form: the all-gather of rank ids.
  std::vector<int64_t> ids(w.size()), mine = {w.rank()};
  w.all_gather(ids.data(), mine.data(), 1);
  for (int q = 0; q < w.size(); ++q) EXPECT_EQ(ids[q], q);
}

TEST(SortChunks, SpecExampleRankZero) {
  // §7.4: EP = 2, rank 0 receives G = [[2, 1], [2, 2]] (rows: source rank, cols: local expert);
  // received (src, expert, token): (0,e0,t0)(0,e0,t2)(0,e1,t1)(1,e0,t1)(1,e0,t3)(1,e1,t0)(1,e1,t1)
  // after the sort: e0: (0,t0)(0,t2)(1,t1)(1,t3); e1: (0,t1)(1,t0)(1,t1).
  std::vector<int64_t> G = {2, 1, 2, 2};
  std::vector<float> in = {0.0f, 2.0f, 1.0f, 11.0f, 13.0f, 10.0f, 11.0f};  // 10*src + token
  std::vector<float> out(7), back(7);
  sort_chunks(out.data(), in.data(), G, 2, 2, 1, true);
  EXPECT_EQ(out, (std::vector<float>{0, 2, 11, 13, 1, 10, 11}));
  sort_chunks(back.data(), out.data(), G, 2, 2, 1, false);
  EXPECT_EQ(back, in);
}

// The debug trace: every rank logs its collectives; ranks of one group log the same sequence.
TEST(CollectiveTrace, EveryRankOfAGroupIssuesTheSameCollectivesInOrder) {
  Communicator w = Communicator::world();
  const std::string prefix = (std::filesystem::temp_directory_path() / "fivefold_trace").string();
  {
    ParallelConfig pc;
    pc.ep = w.size();
    pc.trace_collectives = prefix;
    ParallelGrid g(w, pc);
    std::vector<float> v(7, 1.0f);
    g.dp_cp().all_reduce_sum(v.data(), 7);
    g.ep().all_reduce_sum(v.data(), 3);
    EXPECT_GT(g.communication_seconds(), 0.0);
  }
  w.barrier();
  auto read = [&](int r) {
    std::ifstream f(prefix + ".rank" + std::to_string(r) + ".log");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  EXPECT_EQ(read(w.rank()), "0 dp_cp all_reduce 7\n1 ep all_reduce 3\n");
  EXPECT_EQ(read(w.rank()), read(0));
}

}  // namespace
}  // namespace ff
