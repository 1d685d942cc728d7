#include "layers/tensor_parallel.h"

#include <cstring>

#include "parallel/comm_ops.h"

namespace ff {

const float* TensorParallel::enter(const float* x, int64_t N, int64_t D, Arena& arena) const {
  if (!active() || !sequence_parallel) return x;  // copy_to_tp: identity
  float* full = arena.alloc_f32(N * D);
  sp_all_gather(full, x, N / size(), D, *group);
  return full;
}

void TensorParallel::enter_backward(float* dx, float* dfull, int64_t N, int64_t D, bool accumulate,
                                    Arena& scratch) const {
  const int64_t rows = local_rows(N);
  const float* src = dfull;
  if (active() && !sequence_parallel) {
    tp_all_reduce(dfull, N * D, *group);  // copy_to_tp backward
  } else if (active()) {
    float* mine = scratch.alloc_f32(rows * D);
    sp_reduce_scatter(mine, dfull, N, D, *group);  // all-gather backward
    src = mine;
  }
  if (accumulate) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < rows * D; ++i) dx[i] += src[i];
  } else if (src != dx) {
    std::memcpy(dx, src, sizeof(float) * static_cast<size_t>(rows * D));
  }
}

void TensorParallel::leave(float* out, float* partial, int64_t N, int64_t D) const {
  if (active() && sequence_parallel) {
    sp_reduce_scatter(out, partial, N, D, *group);
    return;
  }
  if (active()) tp_all_reduce(partial, N * D, *group);  // reduce_from_tp
  if (out != partial) std::memcpy(out, partial, sizeof(float) * static_cast<size_t>(N * D));
}

const float* TensorParallel::leave_backward(const float* dout, int64_t N, int64_t D, Arena& scratch) const {
  if (!active() || !sequence_parallel) return dout;  // reduce_from_tp backward: identity
  float* full = scratch.alloc_f32(N * D);
  sp_all_gather(full, dout, N / size(), D, *group);
  return full;
}

}  // namespace ff
