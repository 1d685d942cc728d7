// The scalar (value) head of reward models and critics: v[n] = x[n] . w with w = "score.weight"
// [1, D], on the full rows of the TP region (every TP rank sees every row, so every TP rank holds
// w whole with the same gradient). Per token; an objective that wants one value per sequence
// (a reward model's last token) picks its rows. fp32 throughout (a single dot product per row).
// Legend: N rows, D width.
#pragma once
#include <cstdint>

#include "core/param.h"

namespace ff {

class ValueHead {
 public:
  ValueHead(ParamStore& store, int64_t D, float init_std);

  struct Saved {
    const float* x = nullptr;  // [N, D] the head's input (the caller's, kept alive until backward)
    Tensor v;                  // [N]
  };
  void forward(Saved& s, const float* x, int64_t N, Arena& arena) const;
  // dx[N, D] OVERWRITTEN = dv w; w.grad += dv^T x.
  void backward(float* dx, const float* dv, const Saved& s, int64_t N) const;

  Param* weight() const { return w_; }

 private:
  int64_t D_;
  Param* w_;
};

}  // namespace ff
