#include "core/param.h"

#include <algorithm>

namespace ff {

Param* ParamStore::add(const std::string& name, const Shape& shape, ParamInit init, float init_std,
                       bool weight_decay) {
  FF_CHECK(values_.empty(), "parameter '%s' registered after allocate()", name.c_str());
  FF_CHECK(find(name) == nullptr, "parameter '%s' registered twice", name.c_str());
  Param p;
  p.name = name;
  p.global_shape = shape;
  p.local_shape = shape;
  p.local_offset = Shape::from(std::vector<int64_t>(static_cast<size_t>(shape.rank), 0));
  p.init = init;
  p.init_std = init_std;
  p.weight_decay = weight_decay;
  p.offset = total_;
  total_ += shape.numel();
  params_.push_back(std::move(p));
  return &params_.back();
}

void ParamStore::allocate(uint64_t seed) {
  values_.assign(static_cast<size_t>(total_), 0.0f);
  grads_.assign(static_cast<size_t>(total_), 0.0f);
  for (auto& p : params_) {
    p.value = values_.data() + p.offset;
    p.grad = grads_.data() + p.offset;
    switch (p.init) {
      case ParamInit::zeros: std::fill(p.value, p.value + p.numel(), 0.0f); break;
      case ParamInit::ones: std::fill(p.value, p.value + p.numel(), 1.0f); break;
      case ParamInit::normal: {
        Rng rng(seed, "init:" + p.name);
        for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = rng.normal() * p.init_std;
        break;
      }
    }
  }
}

Param* ParamStore::find(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

void ParamStore::zero_grads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

}  // namespace ff
