#include "parallel/thread_count.h"

#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <bit>

namespace ff {

namespace {
constexpr int kMaskWords = CPU_SETSIZE / 64;

int cpus_in(const CpuMask& m) {
  int n = 0;
  for (uint64_t w : m) n += std::popcount(w);
  return n;
}

bool overlap(const CpuMask& a, const CpuMask& b) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (a[i] & b[i]) return true;
  return false;
}
}  // namespace

int threads_for_mask(const std::vector<CpuMask>& masks, int me) {
  const CpuMask& mine = masks[static_cast<size_t>(me)];
  int sharing = 0;  // the ranks whose masks meet mine, me included
  for (const CpuMask& m : masks) sharing += overlap(m, mine) ? 1 : 0;
  return std::max(1, cpus_in(mine) / std::max(1, sharing));
}

CpuMask own_cpu_mask() {
  cpu_set_t set;
  CPU_ZERO(&set);
  CpuMask m(kMaskWords, 0);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {  // unknown: one CPU, never oversubscribe
    m[0] = 1;
    return m;
  }
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) m[static_cast<size_t>(c / 64)] |= uint64_t(1) << (c % 64);
  return m;
}

int default_thread_count() {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local = 1, me = 0;
  MPI_Comm_size(node, &local);
  MPI_Comm_rank(node, &me);
  const CpuMask mine = own_cpu_mask();
  std::vector<uint64_t> all(static_cast<size_t>(local) * kMaskWords);
  MPI_Allgather(mine.data(), kMaskWords, MPI_UINT64_T, all.data(), kMaskWords, MPI_UINT64_T, node);
  MPI_Comm_free(&node);
  std::vector<CpuMask> masks;
  for (int r = 0; r < local; ++r)
    masks.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(r) * kMaskWords,
                       all.begin() + static_cast<std::ptrdiff_t>(r + 1) * kMaskWords);
  return threads_for_mask(masks, me);
}

}  // namespace ff
