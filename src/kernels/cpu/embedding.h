// Token embedding lookup. Legend: N tokens, D model width, V vocabulary rows held.
#pragma once
#include <cstdint>

namespace ff::cpu {

// The table may be a shard of a vocabulary-parallel embedding: it holds the V rows of global ids
// [vocab_begin, vocab_begin + V) of a vocabulary of vocab_total ids (default: the whole table).
// out[n, :] = table[tokens[n] - vocab_begin, :], or 0 when the token's row is held elsewhere.
// Every token must lie in [0, vocab_total): checked, with a clear error.
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t D,
                       int64_t V, int64_t vocab_begin = 0, int64_t vocab_total = -1);
// dtable[tokens[n] - vocab_begin, :] += dout[n, :] for the tokens whose row is held here
// (accumulates; deterministic: rows are summed in token order).
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t D, int64_t V, int64_t vocab_begin = 0, int64_t vocab_total = -1);

}  // namespace ff::cpu
