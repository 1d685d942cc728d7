// The layers' GEMMs in the model's compute precision (layers/model_config.h Precision).
//   fp32: OpenBLAS on the fp32 master values and fp32 activations.
//   bf16: oneDNN on bf16 operands: each weight's bf16 copy (Param::value_bf16, refreshed after
//         every optimizer step) and the activations cast to bf16 once, where they are produced;
//         fp32 accumulation, fp32 results, and fp32 accumulation of the weight gradients.
// An "operand" is a GEMM input [rows, cols]: a Tensor of the compute dtype. Layers keep the
// operand form of an input for the weight gradient in backward, so under bf16 the saved GEMM
// inputs take half the memory.
// The model owns one Compute and hands it to its layers at construction (it caches oneDNN
// primitives, so it is used from one thread of control).
#pragma once
#include <cstdint>
#include <vector>

#include "core/param.h"
#include "kernels/cpu/matmul.h"
#include "layers/model_config.h"

namespace ff {

// A weight matrix [out, in] stored row-major, or a block of a stacked parameter (one expert's).
struct Weight {
  const float* value = nullptr;
  const bf16_t* value_bf16 = nullptr;  // null under fp32
  float* grad = nullptr;  // null: frozen (no weight gradient)

  static Weight of(const Param& p) { return {p.value, p.value_bf16, p.grad}; }
  Weight at(int64_t offset) const {
    return {value + offset, value_bf16 ? value_bf16 + offset : nullptr, grad ? grad + offset : nullptr};
  }
};

// Rows [row, row + rows) of an operand [*, cols] (a view).
Tensor operand_rows(const Tensor& t, int64_t row, int64_t rows, int64_t cols);

class Compute {
 public:
  explicit Compute(Precision precision = Precision::fp32) : precision_(precision) {}
  Compute(const Compute&) = delete;
  Compute& operator=(const Compute&) = delete;

  Precision precision() const { return precision_; }
  bool bf16() const { return precision_ == Precision::bf16; }
  DType operand_dtype() const { return bf16() ? DType::bf16 : DType::f32; }

  // The operand form of x[rows, cols]: a view of x under fp32, a bf16 copy in the arena under bf16.
  Tensor operand(const float* x, int64_t rows, int64_t cols, Arena& arena) const;
  // The same, converted into `buffer` (an operand of at least rows x cols) instead of the arena.
  Tensor operand(const float* x, int64_t rows, int64_t cols, const Tensor& buffer) const;
  // An uninitialised operand buffer [rows, cols], for kernels that write the operand directly.
  Tensor alloc_operand(int64_t rows, int64_t cols, Arena& arena) const {
    return arena.alloc(Shape{rows, cols}, operand_dtype());
  }

  // y[rows, out] = x[rows, in] W^T, overwritten. variable_rows: rows change from call to call
  // (expert segments); one cached primitive then serves them all.
  void linear_forward(float* y, const Tensor& x, Weight w, int64_t rows, int64_t in, int64_t out,
                      bool variable_rows = false);
  // dx[rows, in] = dy W (or += when accumulate_dx; skipped when dx is null), and W.grad += dy^T x.
  // dy and x are operands [rows, out] and [rows, in].
  void linear_backward(float* dx, Weight w, const Tensor& dy, const Tensor& x, int64_t rows, int64_t in,
                       int64_t out, bool accumulate_dx, bool variable_rows = false);

  // Grouped GEMMs over contiguous row segments (the experts of an MoE layer): segment g holds
  // counts[g] rows (0 allowed) and uses the weight block w.at(g * w_stride). One pass over the
  // permuted rows with no allocation; under bf16 one cached oneDNN primitive serves every
  // segment, whatever its row count. Same contracts as linear_forward / linear_backward, with
  // dx always overwritten.
  void grouped_forward(float* y, const Tensor& x, Weight w, int64_t w_stride, const std::vector<int64_t>& counts,
                       int64_t in, int64_t out);
  // The same with the result in the operand dtype (bf16 under bf16 compute, rounded from the fp32
  // accumulation): for a result that only feeds elementwise kernels and is kept for backward.
  void grouped_forward(const Tensor& y, const Tensor& x, Weight w, int64_t w_stride, const std::vector<int64_t>& counts,
                       int64_t in, int64_t out);
  void grouped_backward(float* dx, Weight w, int64_t w_stride, const Tensor& dy, const Tensor& x,
                        const std::vector<int64_t>& counts, int64_t in, int64_t out);

  cpu::Matmul& matmul() { return matmul_; }

  // Training or evaluation: what stochastic layers (LoRA dropout) read. Evaluation and the
  // inference path switch it off for their duration (TrainingMode below).
  bool training() const { return training_; }
  void set_training(bool on) { training_ = on; }
  // Whether LoRA adapters (layers/linear.h) act: off, a model computes its frozen base, which
  // serves as the reference of DPO and PPO under LoRA without a second copy of the weights. Set
  // for a forward and its backward together.
  bool adapters_on() const { return adapters_on_; }
  void set_adapters(bool on) { adapters_on_ = on; }

 private:
  bool training_ = true;
  bool adapters_on_ = true;
  Precision precision_;
  cpu::Matmul matmul_;
};

// Sets a Compute's training flag for a scope and restores the previous value.
class TrainingMode {
 public:
  TrainingMode(Compute& c, bool on) : c_(c), was_(c.training()) { c.set_training(on); }
  ~TrainingMode() { c_.set_training(was_); }
  TrainingMode(const TrainingMode&) = delete;
  TrainingMode& operator=(const TrainingMode&) = delete;

 private:
  Compute& c_;
  bool was_;
};

}  // namespace ff
