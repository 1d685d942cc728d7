#include "kernels/cpu/matmul.h"

#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include "core/check.h"

namespace ff::cpu {

namespace {
using dnnl::memory;
using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, Varying, bool>;

// A row-major [rows, cols] matrix with row stride ld, or its transpose (stored [cols, rows]).
memory::desc matrix(int64_t rows, int64_t cols, int64_t ld, bool transposed, memory::data_type dt) {
  return transposed ? memory::desc({rows, cols}, dt, {1, ld}) : memory::desc({rows, cols}, dt, {ld, 1});
}
}  // namespace

struct Matmul::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<Key, dnnl::matmul> primitives;
};

Matmul::Matmul() : impl_(std::make_unique<Impl>()) {}
Matmul::~Matmul() = default;
size_t Matmul::cached_primitives() const { return impl_->primitives.size(); }

void Matmul::run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                 const bf16_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate, Varying varying) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // the empty product
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = 0.0f;
    return;
  }
  execute(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, false, ldc, accumulate, varying);
}

void Matmul::run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                 const bf16_t* B, int64_t ldb, bf16_t* C, int64_t ldc, Varying varying) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = 0;
    return;
  }
  execute(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, true, ldc, false, varying);
}

void Matmul::execute(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
                     const bf16_t* B, int64_t ldb, void* C, bool c_bf16, int64_t ldc, bool accumulate,
                     Varying varying) {
  using dt = memory::data_type;
  constexpr int64_t R = DNNL_RUNTIME_DIM_VAL;
  const int64_t m = varying == Varying::m ? R : M, k = varying == Varying::k ? R : K;
  const Key key{trans_a, trans_b, m, N, k, lda, ldb, ldc, accumulate, varying, c_bf16};
  const auto c_type = c_bf16 ? dt::bf16 : dt::f32;
  auto it = impl_->primitives.find(key);
  if (it == impl_->primitives.end()) {
    dnnl::primitive_attr attr;
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    try {
      dnnl::matmul::primitive_desc pd(
          dnnl::matmul::desc(matrix(m, k, lda, trans_a, dt::bf16), matrix(k, N, ldb, trans_b, dt::bf16),
                             matrix(m, N, ldc, false, c_type)),
          attr, impl_->engine);
      it = impl_->primitives.emplace(key, dnnl::matmul(pd)).first;
    } catch (const dnnl::error& e) {  // oneDNN has no bf16 matmul below AVX-512 (e.g. an AVX2-only CPU)
      FF_FAIL("model.precision = bf16: oneDNN has no bf16 matmul on this CPU (%s; it needs AVX-512, and runs "
              "fastest with AVX512-BF16 or AMX): train with --precision fp32", e.what());
    }
  }
  memory a(matrix(M, K, lda, trans_a, dt::bf16), impl_->engine, const_cast<bf16_t*>(A));
  memory b(matrix(K, N, ldb, trans_b, dt::bf16), impl_->engine, const_cast<bf16_t*>(B));
  memory c(matrix(M, N, ldc, false, c_type), impl_->engine, C);
  it->second.execute(impl_->stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  impl_->stream.wait();
}

}  // namespace ff::cpu
