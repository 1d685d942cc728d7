// Token embedding lookup. Legend: N tokens, D model width, V vocabulary rows held.
#pragma once
#include <cstdint>

namespace ff::cpu {

// out[n, :] = table[tokens[n], :]. Every token must lie in [0, V): checked, with a clear error.
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t D,
                       int64_t V);
// dtable[tokens[n], :] += dout[n, :]  (accumulates; deterministic: rows are summed in token order).
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t D, int64_t V);

}  // namespace ff::cpu
