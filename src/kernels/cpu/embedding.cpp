#include "kernels/cpu/embedding.h"

#include "core/check.h"

namespace ff::cpu {
namespace {

// Validated serially, before any parallel region (an exception must not leave an OpenMP region).
void check_tokens(const int32_t* tokens, int64_t N, int64_t V, const char* what) {
  for (int64_t n = 0; n < N; ++n)
    FF_CHECK(tokens[n] >= 0 && tokens[n] < V,
             "%s: token id %d at row %lld is outside the vocabulary rows held [0, %lld)", what,
             tokens[n], static_cast<long long>(n), static_cast<long long>(V));
}

}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t D,
                       int64_t V, int64_t vocab_begin, int64_t vocab_total) {
  check_tokens(tokens, N, vocab_total < 0 ? V : vocab_total, "embedding_forward");
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t row_id = static_cast<int64_t>(tokens[n]) - vocab_begin;
    float* o = out + n * D;
    if (row_id < 0 || row_id >= V) {  // held by another vocabulary shard
      for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
      continue;
    }
    const float* row = table + row_id * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] = row[d];
  }
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t D, int64_t V, int64_t vocab_begin, int64_t vocab_total) {
  // forward: out[n, :] = table[tokens[n], :]  =>  dtable[tokens[n], :] += dout[n, :].
  // Two tokens may share a row, so rows are not independent; instead each thread owns a block of
  // columns and walks all tokens in order, which keeps the summation order fixed (deterministic).
  check_tokens(tokens, N, vocab_total < 0 ? V : vocab_total, "embedding_backward");
  constexpr int64_t kBlock = 64;
  const int64_t nblocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t d0 = blk * kBlock, d1 = d0 + kBlock < D ? d0 + kBlock : D;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row_id = static_cast<int64_t>(tokens[n]) - vocab_begin;
      if (row_id < 0 || row_id >= V) continue;
      float* g = dtable + row_id * D;
      const float* d = dout + n * D;
#pragma omp simd
      for (int64_t j = d0; j < d1; ++j) g[j] += d[j];
    }
  }
}

}  // namespace ff::cpu
