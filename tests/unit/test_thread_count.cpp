// The default thread count of a rank (parallel/thread_count.h) from its node's affinity masks:
// unbound ranks split the node, bound ranks keep what the launcher gave them.
#include <gtest/gtest.h>

#include <algorithm>

#include "parallel/thread_count.h"

namespace ff {
namespace {

CpuMask cpus(std::initializer_list<int> list) {
  CpuMask m(2, 0);
  for (int c : list) m[static_cast<size_t>(c / 64)] |= uint64_t(1) << (c % 64);
  return m;
}

CpuMask range(int first, int count) {
  CpuMask m(2, 0);
  for (int c = first; c < first + count; ++c) m[static_cast<size_t>(c / 64)] |= uint64_t(1) << (c % 64);
  return m;
}

TEST(ThreadCount, UnboundRanksSplitTheNode) {
  const std::vector<CpuMask> node(4, range(0, 64));  // 4 ranks, each may run anywhere on 64 CPUs
  for (int r = 0; r < 4; ++r) EXPECT_EQ(threads_for_mask(node, r), 16);
}

TEST(ThreadCount, RanksBoundToSocketsShareOnlyTheirSocket) {
  // 8 ranks on 2 sockets of 32 CPUs (CPUs 0-31 and 32-63 across the word boundary too): 4 per socket.
  std::vector<CpuMask> node;
  for (int r = 0; r < 8; ++r) node.push_back(range(r < 4 ? 0 : 32, 32));
  for (int r = 0; r < 8; ++r) EXPECT_EQ(threads_for_mask(node, r), 8);
  node.push_back(range(64, 16));  // a ninth rank alone on CPUs 64-79 (the second word)
  EXPECT_EQ(threads_for_mask(node, 8), 16);
}

TEST(ThreadCount, RanksBoundToTheirOwnCoresKeepThem) {
  const std::vector<CpuMask> node = {cpus({0, 1}), cpus({2, 3}), cpus({4, 5, 6, 7})};
  EXPECT_EQ(threads_for_mask(node, 0), 2);
  EXPECT_EQ(threads_for_mask(node, 2), 4);
}

TEST(ThreadCount, NeverBelowOne) {
  const std::vector<CpuMask> node(3, cpus({0, 1}));  // 3 ranks on 2 CPUs
  EXPECT_EQ(threads_for_mask(node, 1), 1);
  const CpuMask own = own_cpu_mask();  // this process may run somewhere
  EXPECT_TRUE(std::any_of(own.begin(), own.end(), [](uint64_t w) { return w != 0; }));
}

}  // namespace
}  // namespace ff
