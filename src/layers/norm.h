// Norm layer: RMSNorm or LayerNorm1p over the model width. Legend: N tokens, D width.
#pragma once
#include <string>

#include "core/param.h"
#include "layers/model_config.h"

namespace ff {

class Norm {
 public:
  Norm(ParamStore& store, const std::string& prefix, int64_t D, NormKind kind, float eps);

  struct Saved {
    Tensor y;           // [N, D] normalised output
    Tensor mean, rstd;  // [N] statistics
  };
  void forward(Saved& s, const float* x, int64_t N, Arena& arena) const;
  // dx[N, D] += d/dx (residual-stream contract); parameter gradients accumulate.
  void backward(float* dx, const float* dy, const float* x, const Saved& s, int64_t N) const;

 private:
  int64_t D_;
  NormKind kind_;
  float eps_;
  Param* weight_;
  Param* bias_ = nullptr;  // layernorm1p only
};

}  // namespace ff
