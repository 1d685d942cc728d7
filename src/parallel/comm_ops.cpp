#include "parallel/comm_ops.h"

#include "core/check.h"

namespace ff {

void sp_all_gather(float* out, const float* in, int64_t rows, int64_t width, const Communicator& tp) {
  tp.all_gather(out, in, rows * width);
}

void sp_reduce_scatter(float* out, const float* in, int64_t rows, int64_t width, const Communicator& tp) {
  FF_CHECK(rows % tp.size() == 0, "sequence-parallel reduce-scatter of %lld rows over %d ranks", (long long)rows,
           tp.size());
  tp.reduce_scatter(out, in, rows / tp.size() * width);
}

}  // namespace ff
