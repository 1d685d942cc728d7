#include "core/param.h"

#include <fnmatch.h>

#include <algorithm>
#include <sstream>

#include "core/check.h"

namespace ff {

std::vector<std::string> parse_name_globs(const std::string& comma_separated) {
  std::vector<std::string> out;
  std::stringstream ss(comma_separated);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

bool matches_any(const std::string& name, const std::vector<std::string>& globs) {
  for (const auto& g : globs)
    if (fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

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

Param* ParamStore::add_slice(const std::string& name, const Shape& global_shape, const Shape& local_shape,
                             const Shape& local_offset, ParamInit init, float init_std, bool weight_decay) {
  FF_CHECK(global_shape.rank <= 2 && local_shape.rank == global_shape.rank && local_offset.rank == global_shape.rank,
           "parameter '%s': slices of up to 2-D tensors only", name.c_str());
  for (int d = 0; d < global_shape.rank; ++d)
    FF_CHECK(local_offset[d] >= 0 && local_offset[d] + local_shape[d] <= global_shape[d],
             "parameter '%s': slice %s at %s outside %s", name.c_str(), local_shape.str().c_str(),
             local_offset.str().c_str(), global_shape.str().c_str());
  Param* p = add(name, local_shape, init, init_std, weight_decay);
  p->global_shape = global_shape;
  p->local_offset = local_offset;
  return p;
}

void ParamStore::allocate(uint64_t seed, int64_t dense_alignment, int64_t expert_alignment) {
  for (size_t i = 1; i < params_.size(); ++i)
    if (params_[i].fused_with_previous && params_[i].trainable != params_[i - 1].trainable)
      throw UserError(strprintf("'%s' and '%s' are parts of one fused matrix: freeze both or neither (train.freeze)",
                                params_[i - 1].name.c_str(), params_[i].name.c_str()));
  // Lay out the dense region, then the expert region, each in registration order and padded; the
  // frozen parameters after them.
  // Each region's size (not its end) is a multiple of its alignment: the expert group may be
  // larger than the dense one (ETP < TP), so the dense region's end need not divide by it.
  int64_t off = 0;
  for (bool expert : {false, true}) {
    const int64_t begin = off;
    for (auto& p : params_)
      if (p.trainable && p.expert == expert) {
        p.offset = off;
        off += p.numel();
      }
    const int64_t align = expert ? expert_alignment : dense_alignment;
    off = begin + (off - begin + align - 1) / align * align;
    if (!expert) dense_end_ = off;
  }
  trainable_end_ = off;
  for (auto& p : params_)
    if (!p.trainable) {
      p.offset = off;
      off += p.numel();
    }
  total_ = off;
  values_.assign(static_cast<size_t>(total_), 0.0f);
  grads_.assign(static_cast<size_t>(trainable_end_), 0.0f);
  for (auto& p : params_) {
    p.value = values_.data() + p.offset;
    p.grad = p.trainable ? grads_.data() + p.offset : nullptr;
    switch (p.init) {
      case ParamInit::zeros: std::fill(p.value, p.value + p.numel(), 0.0f); break;
      case ParamInit::ones: std::fill(p.value, p.value + p.numel(), 1.0f); break;
      case ParamInit::normal:
      case ParamInit::uniform:
      case ParamInit::draw: {
        // Draw the global tensor in order and keep this rank's slice (rows x cols of a matrix).
        Rng rng(seed, "init:" + p.name);
        auto element = [&]() -> float {
          if (p.init == ParamInit::normal) return rng.normal() * p.init_std;
          if (p.init == ParamInit::uniform) return (2.0f * rng.uniform() - 1.0f) * p.init_std;
          return p.draw(rng);
        };
        const int64_t rows = p.global_shape.rank == 2 ? p.global_shape[0] : 1;
        const int64_t cols = p.global_shape.rank == 2 ? p.global_shape[1] : p.global_shape.numel();
        const int64_t r0 = p.global_shape.rank == 2 ? p.local_offset[0] : 0;
        const int64_t c0 = p.global_shape.rank == 2 ? p.local_offset[1] : (p.local_offset.rank ? p.local_offset[0] : 0);
        const int64_t lr = p.global_shape.rank == 2 ? p.local_shape[0] : 1;
        const int64_t lc = p.global_shape.rank == 2 ? p.local_shape[1] : p.local_shape.numel();
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const float v = element();
            if (r >= r0 && r < r0 + lr && c >= c0 && c < c0 + lc) p.value[(r - r0) * lc + (c - c0)] = v;
          }
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

void ParamStore::zero_grads() {
  float* g = grads_.data();
  const auto n = static_cast<int64_t>(grads_.size());
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) g[i] = 0.0f;
}

void ParamStore::allocate_bf16_copy() {
  FF_CHECK(!values_.empty() || total_ == 0, "allocate_bf16_copy() before allocate()");
  values_bf16_.assign(values_.size(), 0);
  for (auto& p : params_) p.value_bf16 = values_bf16_.data() + p.offset;
}

}  // namespace ff
