#include "layers/compute.h"

#include <cstddef>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/gemm.h"

namespace ff {

Tensor Compute::operand(const float* x, int64_t rows, int64_t cols, Arena& arena) const {
  if (!bf16()) return Tensor{const_cast<float*>(x), Shape{rows, cols}, DType::f32};
  Tensor t = arena.alloc(Shape{rows, cols}, DType::bf16);
  cpu::to_bf16(t.bf16(), x, rows * cols);
  return t;
}

Tensor Compute::operand(const float* x, int64_t rows, int64_t cols, const Tensor& buffer) const {
  if (!bf16()) return Tensor{const_cast<float*>(x), Shape{rows, cols}, DType::f32};
  FF_CHECK(buffer.dtype == DType::bf16 && buffer.numel() >= rows * cols, "operand buffer too small");
  cpu::to_bf16(buffer.bf16(), x, rows * cols);
  return Tensor{buffer.ptr, Shape{rows, cols}, DType::bf16};
}

void Compute::linear_forward(float* y, const Tensor& x, Weight w, int64_t rows, int64_t in, int64_t out,
                             bool variable_rows) {
  if (!bf16()) {
    cpu::linear_forward(y, x.f32(), w.value, rows, in, out);
    return;
  }
  FF_CHECK(w.value_bf16, "bf16 compute without the weights' bf16 copy");
  matmul_.run(false, true, rows, out, in, x.bf16(), in, w.value_bf16, in, y, out, false,
              variable_rows ? cpu::Varying::m : cpu::Varying::none);
}

void Compute::linear_backward(float* dx, Weight w, const Tensor& dy, const Tensor& x, int64_t rows, int64_t in,
                              int64_t out, bool accumulate_dx, bool variable_rows) {
  if (!bf16()) {
    cpu::linear_backward(dx, w.grad, dy.f32(), x.f32(), w.value, rows, in, out, accumulate_dx);
    return;
  }
  // y = x W^T  =>  dx = dy W [rows, in],  dW += dy^T x [out, in] (dy^T: dy read transposed).
  if (dx)
    matmul_.run(false, false, rows, in, out, dy.bf16(), out, w.value_bf16, in, dx, in, accumulate_dx,
                variable_rows ? cpu::Varying::m : cpu::Varying::none);
  if (w.grad)
    matmul_.run(true, false, out, in, rows, dy.bf16(), out, x.bf16(), in, w.grad, in, true,
                variable_rows ? cpu::Varying::k : cpu::Varying::none);
}

Tensor operand_rows(const Tensor& t, int64_t row, int64_t rows, int64_t cols) {
  auto* base = static_cast<std::byte*>(t.ptr) + row * cols * static_cast<int64_t>(dtype_size(t.dtype));
  return Tensor{base, Shape{rows, cols}, t.dtype};
}

void Compute::grouped_forward(float* y, const Tensor& x, Weight w, int64_t w_stride,
                              const std::vector<int64_t>& counts, int64_t in, int64_t out) {
  int64_t start = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    const int64_t n = counts[g];
    if (n > 0)
      linear_forward(y + start * out, operand_rows(x, start, n, in), w.at(static_cast<int64_t>(g) * w_stride), n, in,
                     out, true);
    start += n;
  }
}

void Compute::grouped_forward(const Tensor& y, const Tensor& x, Weight w, int64_t w_stride,
                              const std::vector<int64_t>& counts, int64_t in, int64_t out) {
  if (y.dtype == DType::f32) {
    grouped_forward(y.f32(), x, w, w_stride, counts, in, out);
    return;
  }
  FF_CHECK(bf16(), "a bf16 GEMM result under fp32 compute");
  int64_t start = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    const int64_t n = counts[g];
    if (n > 0)
      matmul_.run(false, true, n, out, in, operand_rows(x, start, n, in).bf16(), in,
                  w.at(static_cast<int64_t>(g) * w_stride).value_bf16, in, y.bf16() + start * out, out, cpu::Varying::m);
    start += n;
  }
}

void Compute::grouped_backward(float* dx, Weight w, int64_t w_stride, const Tensor& dy, const Tensor& x,
                               const std::vector<int64_t>& counts, int64_t in, int64_t out) {
  int64_t start = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    const int64_t n = counts[g];
    if (n > 0)
      linear_backward(dx + start * in, w.at(static_cast<int64_t>(g) * w_stride), operand_rows(dy, start, n, out),
                      operand_rows(x, start, n, in), n, in, out, false, true);
    start += n;
  }
}

}  // namespace ff
