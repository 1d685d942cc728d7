// How many OpenMP threads a rank runs when neither train.threads nor OMP_NUM_THREADS says: the
// CPUs it may run on (its affinity mask, as the launcher bound it) shared evenly with the other
// ranks of its node whose masks overlap its own. Unbound ranks (every mask the whole node) split
// the node's CPUs among themselves; ranks bound to their own cores or sockets keep what they
// were given, which dividing by all the node's ranks would shrink again.
#pragma once
#include <cstdint>
#include <vector>

namespace ff {

// A CPU affinity mask: bit c of word c / 64 set when the rank may run on CPU c.
using CpuMask = std::vector<uint64_t>;

// masks: every rank of the node's, mine at index `me`. At least 1.
int threads_for_mask(const std::vector<CpuMask>& masks, int me);

// This process's mask (sched_getaffinity).
CpuMask own_cpu_mask();

// Collective over MPI_COMM_WORLD: the masks of this node's ranks gathered, then threads_for_mask.
int default_thread_count();

}  // namespace ff
