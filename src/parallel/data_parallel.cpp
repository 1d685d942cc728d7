#include "parallel/data_parallel.h"

namespace ff {

void reduce_gradients(ParamStore& store, const ParallelGrid& grid) {
  const float scale = 1.0f / static_cast<float>(grid.dp_size() * grid.cp().size());
  auto& params = store.params();
  for (auto it = params.begin(); it != params.end();) {
    if (!it->trainable) {  // frozen: no gradient
      ++it;
      continue;
    }
    // [it, end) is a run of adjacent parameters of the same kind, contiguous in the grad buffer.
    auto end = it;
    int64_t n = 0;
    while (end != params.end() && end->trainable && end->expert == it->expert && end->tp_replicated == it->tp_replicated &&
           end->tp_partial_grad == it->tp_partial_grad && end->etp_partial_grad == it->etp_partial_grad &&
           end->grad == it->grad + n) {
      n += end->numel();
      ++end;
    }
    float* g = it->grad;
    // Under sequence parallelism a TP-replicated parameter saw only this rank's tokens (§5.4 b).
    if ((it->tp_replicated && grid.config().sequence_parallel) || it->tp_partial_grad) grid.tp().all_reduce_sum(g, n);
    if (it->etp_partial_grad) grid.etp().all_reduce_sum(g, n);  // an expert factor held whole over ETP
    if (scale != 1.0f) {
#pragma omp parallel for simd schedule(static)
      for (int64_t i = 0; i < n; ++i) g[i] *= scale;
    }
    (it->expert ? grid.edp() : grid.dp_cp()).all_reduce_sum(g, n);
    it = end;
  }
}

}  // namespace ff
