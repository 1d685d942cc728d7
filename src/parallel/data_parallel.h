// Data-parallel gradient reduction (specs/parallelism-and-moe.md §5.2): after the last
// micro-batch, gradients of replicated parameters are summed over the ranks holding replicas,
// pre-scaled by 1 / (DP * CP) so that every layout trains the same model as one process
// accumulating all DP micro-batches: dense parameters over DP x CP, expert parameters over
// expert-DP (with the same factor: each expert gradient already sums the contributions of the
// tokens every EP peer sent it).
#pragma once
#include "core/param.h"
#include "parallel/grid.h"

namespace ff {

// Parameters every TP rank holds whole (norms, router) are first summed over TP when sequence
// parallelism gave each TP rank different tokens; LoRA factors held whole beside a sliced weight
// are summed over TP (Param::tp_partial_grad), or over ETP beside a sliced expert weight
// (Param::etp_partial_grad). One all-reduce per run of adjacent parameters of
// the same kind, so the collectives are few and large and every rank issues them in the same order.
void reduce_gradients(ParamStore& store, const ParallelGrid& grid);

}  // namespace ff
