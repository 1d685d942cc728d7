// A tensor-parallel region (specs/parallelism-and-moe.md §2): column-parallel GEMMs on the full
// input, local compute, row-parallel GEMM producing partial sums, then the reduction.
// Without sequence parallelism the residual stream is replicated on every TP rank [N, D]:
// entering is identity (backward: all-reduce), leaving is an all-reduce (backward: identity).
// With sequence parallelism each TP rank holds N / TP rows of the stream: entering all-gathers
// (backward: reduce-scatter), leaving reduce-scatters (backward: all-gather).
// With no group (or a group of one) every step is the identity.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace ff {

struct TensorParallel {
  const Communicator* group = nullptr;  // the attention TP group; null = not parallel
  bool sequence_parallel = false;

  int size() const { return group ? group->size() : 1; }
  int rank() const { return group ? group->rank() : 0; }
  bool active() const { return size() > 1; }
  // Rows of the residual stream this rank holds when the full stream has N rows.
  int64_t local_rows(int64_t N) const { return sequence_parallel ? N / size() : N; }

  // Forward of entering: the full [N, D] input of the region from this rank's [local_rows, D].
  const float* enter(const float* x, int64_t N, int64_t D, Arena& arena) const;
  // Backward of entering: dx[local_rows, D] (overwritten, or accumulated when accumulate) from the
  // region's partial input gradient dfull[N, D] (consumed: may be reduced in place).
  void enter_backward(float* dx, float* dfull, int64_t N, int64_t D, bool accumulate, Arena& scratch) const;
  // Forward of leaving: out[local_rows, D] (overwritten) from the partial sums partial[N, D]
  // (consumed).
  void leave(float* out, float* partial, int64_t N, int64_t D) const;
  // Backward of leaving: the full [N, D] output gradient from dout[local_rows, D].
  const float* leave_backward(const float* dout, int64_t N, int64_t D, Arena& scratch) const;
};

}  // namespace ff
