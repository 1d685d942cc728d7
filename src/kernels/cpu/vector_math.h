// Elementwise exponentials over fp32 arrays, the inner loop of softmax (attention, cross-entropy).
// With AVX-512 they call glibc's vector exp (libmvec, _ZGVeN16v_expf) 16 lanes at a time: about
// 8x the scalar expf here, at most ~2e-7 relative error (measured against expf over [-20, 0]),
// and exp(-inf) = 0 as the causal mask needs. Elsewhere they fall back to std::exp.
#pragma once
#include <cstdint>

namespace ff::cpu {

// y[i] = exp(x[i] - shift), i < n. y may alias x.
void exp_shifted(float* y, const float* x, float shift, int64_t n);

// y[i] = exp(x[i] - shift), i < n, and returns their sum accumulated in double. y may alias x,
// or be null (the sum only).
double exp_shifted_sum(float* y, const float* x, float shift, int64_t n);

// max_i x[i] (-inf for n = 0).
float max_value(const float* x, int64_t n);

// sum_i exp(x[i] - shift), accumulated in double; x is not changed.
double sum_exp_shifted(const float* x, float shift, int64_t n);

}  // namespace ff::cpu
