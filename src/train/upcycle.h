// Dense-to-MoE upcycling (specs/methods.md §4-5, specs/parallelism-and-moe.md §9): the chosen
// dense MLP layers become MoE layers of E experts of width F / G (G the granularity), top-K.
//   Virtual groups (§4.2): expert e holds shard e mod G of the dense MLP (gate and up split along
//   the FFN rows, down along its columns, shard i of each paired), so experts kG .. kG + G - 1
//   (group k of R = E / G) hold a whole copy; the router's rows are R random rows each repeated
//   G times, so a group's experts tie and top-K with K = mG picks whole groups. The naive
//   alternative (virtual_groups = false): each expert a random shard, the router random.
//   Weight scaling (§4.3): the MoE's output starts as c MLP(x) with c = 1/G (top-K then softmax)
//   or K / (G E) (softmax then top-K); every expert's projections are multiplied by s = sigma^(1/2)
//   (GELU, degree 2) or sigma^(1/3) (squared ReLU, exact; SwiGLU, gate and up and down:
//   approximate, SiLU is not homogeneous), sigma = 1/c. With scale_down_only the whole sigma goes
//   on down_proj instead, which is linear: exact for every activation wherever the routing is
//   (top-K then softmax with whole groups; softmax then top-K with a zero router).
// Everything else (embeddings, attention, norms: the MLP's pre-norm is the MoE's) is copied.
// A tensor of the MoE model is computed on demand from the dense model's tensors, so under expert
// parallelism each rank builds only its own experts (online upcycling: train --init_from DENSE
// --upcycle_experts E).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "layers/model_config.h"
#include "train/config.h"
#include "train/model_source.h"

namespace ff {

struct UpcycleOptions {
  int64_t experts = 8, top_k = 2, granularity = 1;
  bool softmax_then_topk = true;  // the router order (model.moe_router_pre_softmax)
  bool virtual_groups = true;
  bool scale = true;
  bool scale_down_only = false;   // sigma on down_proj alone (exact for any activation)
  std::string layers = "all";     // all | every_other (the 2nd, 4th, ... MLP) | MLP indices "0,2,5"
  double router_std = 0.02;
  uint64_t seed = 1;
  static UpcycleOptions of(const TrainConfig& tc);
};

// The MoE model's config; every problem with the options is an error naming the field (E not
// divisible by G, F not divisible by G, a source that is already an MoE, ...).
ModelConfig upcycled_config(const ModelConfig& dense, const UpcycleOptions& o);

// The MoE model's global tensor `name` from the dense model's: an expert's shard (scaled), a
// router (virtual-group rows), or the dense tensor itself. False where the dense model has none
// to make it from.
bool upcycled_tensor(const ModelConfig& dense, const UpcycleOptions& o, const TensorFetch& dense_tensor,
                     const std::string& name, HostTensor& out);

// The scale applied to an expert's projection `proj` (gate_proj, up_proj, down_proj; 1 when
// o.scale is false).
double upcycle_scale(const ModelConfig& dense, const UpcycleOptions& o, const std::string& proj = "down_proj");

}  // namespace ff
