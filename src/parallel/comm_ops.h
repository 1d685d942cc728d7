// Tensor-parallel communication as forward/backward pairs (specs/parallelism-and-moe.md §2).
// Each pair is a linear map and its adjoint; rows are tokens of `width` floats, and a
// sequence-parallel shard is a contiguous block of N / TP rows (rank t holds rows [t N/TP, ...)).
//
//   op                     forward                         backward
//   copy_to_tp             identity                        all-reduce (sum) over TP
//   reduce_from_tp         all-reduce (sum) over TP        identity
//   gather_from_sp         all-gather rows [N/TP -> N]     reduce-scatter rows [N -> N/TP]
//   reduce_scatter_to_sp   reduce-scatter rows [N -> N/TP] all-gather rows [N/TP -> N]
//
// Identity halves are no code at all; the other halves are the functions below, named by the
// collective they perform. A layer calls the forward half in forward and the backward half in
// backward, where a reader can see them.
#pragma once
#include <cstdint>

#include "parallel/comm.h"

namespace ff {

// In place: data[n] summed over the group.
inline void tp_all_reduce(float* data, int64_t n, const Communicator& tp) { tp.all_reduce_sum(data, n); }
// out[rows * size, width] = the rank-ordered concatenation of every rank's in[rows, width].
void sp_all_gather(float* out, const float* in, int64_t rows, int64_t width, const Communicator& tp);
// out[rows / size, width] = this rank's row block of in[rows, width], summed over the group.
void sp_reduce_scatter(float* out, const float* in, int64_t rows, int64_t width, const Communicator& tp);

}  // namespace ff
