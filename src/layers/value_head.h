// The value head of reward models, attribute models and critics: v[n, k] = x[n] . w[k] with
// w = "score.weight" [K, D], on the full rows of the TP region (every TP rank sees every row, so
// every TP rank holds w whole with the same gradient). Per token; an objective that wants values
// per sequence (a reward model's last token) picks its rows. fp32 throughout (K dot products per
// row). Legend: N rows, D width, K values per row (model.value_outputs).
#pragma once
#include <cstdint>

#include "core/param.h"

namespace ff {

class ValueHead {
 public:
  ValueHead(ParamStore& store, int64_t D, int64_t K, float init_std);

  struct Saved {
    const float* x = nullptr;  // [N, D] the head's input (the caller's, kept alive until backward)
    Tensor v;                  // [N, K]
  };
  void forward(Saved& s, const float* x, int64_t N, Arena& arena) const;
  // dx[N, D] OVERWRITTEN = dv w (dv [N, K]); w.grad += dv^T x.
  void backward(float* dx, const float* dv, const Saved& s, int64_t N) const;

  Param* weight() const { return w_; }
  int64_t outputs() const { return K_; }

 private:
  int64_t D_, K_;
  Param* w_;
};

}  // namespace ff
