// Context parallelism for Mamba2 layers: the scan runs along whole sequences, so around it an
// all-to-all over the CP group turns this rank's rows of every sequence (its two chunks of each,
// layers/context_parallel.h) with all of its channels into whole sequences with 1 / CP of the
// channels (whole heads and groups), and back. Attention layers keep ring attention.
// Channels come as column segments (z | x | B | C | dt, or one segment); CP rank c takes part c of
// each segment (segment width / CP columns), so its share has the same segment structure.
// Legend: B sequences, S = L x CP positions each, L rows of each held here, P = CP size.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace ff {

// out [B*S, sum(segments) / P] (every position of the B sequences in order; this rank's part of
// each segment) from in [B*L, sum(segments)] (this rank's rows). Each segment must divide by P.
void cp_rows_to_channels(float* out, const float* in, const std::vector<int64_t>& segments, int64_t B, int64_t L,
                         const Communicator& cp, Arena& scratch);
// The inverse, which is also its adjoint: out [B*L, sum(segments)] from in [B*S, sum(segments) / P].
void cp_channels_to_rows(float* out, const float* in, const std::vector<int64_t>& segments, int64_t B, int64_t L,
                         const Communicator& cp, Arena& scratch);

}  // namespace ff
