// Parameters with their global placement (DESIGN decision 4). A Param knows its global name
// (Hugging Face naming where one exists), its global shape, the slice this rank holds and whether
// it is a replica of a slice another rank also holds. Values and gradients of all parameters live
// in two contiguous fp32 buffers in two regions, dense parameters first and expert parameters
// after, each in registration order: parameters of a kind registered one after the other (q, k, v;
// gate, up) are adjacent and can be used as one fused matrix, and each region is one contiguous
// buffer that data parallelism reduces (and the distributed optimizer shards) over its own group.
// Frozen parameters (trainable = false) come after both regions, among the values only: they have
// no gradient buffer, so no weight-gradient GEMM, no reduction and no optimizer state.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace ff {

// normal: N(0, init_std^2); uniform: U[-init_std, init_std]; draw: each value from Param::draw.
enum class ParamInit : uint8_t { normal, zeros, ones, uniform, draw };

struct Param {
  std::string name;        // global name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Shape global_shape;      // shape of the whole tensor across all ranks
  Shape local_shape;       // shape of the slice held here
  Shape local_offset;      // where that slice starts in the global tensor (per dim)
  bool replica = false;    // true if another rank holds the same slice (written once)
  bool weight_decay = true;  // false for norms and biases
  bool expert = false;       // an expert weight: gradients reduce over expert-DP, not DP x CP
  // Held whole by every tensor-parallel rank (norms, router). With sequence parallelism each TP
  // rank sees other tokens, so its gradient is a partial sum, all-reduced over TP (§5.4 b).
  bool tp_replicated = false;
  // Held whole by every TP rank, but each rank's gradient is a partial sum even without sequence
  // parallelism (a LoRA factor beside a sliced weight, layers/linear.h): always all-reduced over TP.
  bool tp_partial_grad = false;
  // The same for an expert parameter over the expert-tensor-parallel group (a LoRA factor beside
  // an ETP-sliced expert weight, layers/moe/experts.h): always all-reduced over ETP, never over TP
  // (with folding the ETP group need not be the TP group).
  bool etp_partial_grad = false;
  // Another data-parallel replica (DP x CP for dense, expert-DP for experts) holds the same values;
  // the first replica writes the parameter to checkpoints.
  bool data_replica = false;
  // False: frozen (fine-tuning a part of a model, the base under LoRA, a reference or teacher
  // model). grad is then null and every backward skips this parameter's gradient.
  bool trainable = true;
  // One matrix with the parameter registered before it (q|k|v, gate|up, Mamba's in_proj
  // segments): both must be trainable or both frozen, so that they stay adjacent.
  bool fused_with_previous = false;
  ParamInit init = ParamInit::normal;
  float init_std = 0.0f;
  std::function<float(Rng&)> draw;  // ParamInit::draw: one value of the global tensor, in order
  int64_t offset = 0;      // first element in the store's flat buffers
  float* value = nullptr;  // [local_shape], valid after ParamStore::allocate()
  float* grad = nullptr;   // [local_shape]; null when frozen
  // The bf16 copy the GEMMs read under bf16 compute (null otherwise); see ParamStore::allocate_bf16_copy.
  bf16_t* value_bf16 = nullptr;

  int64_t numel() const { return local_shape.numel(); }
};

// Glob patterns over parameter names ('*' any run of characters, '?' one, as fnmatch), e.g.
// "model.layers.*.mlp.*". A comma-separated list is split by parse_name_globs.
std::vector<std::string> parse_name_globs(const std::string& comma_separated);
bool matches_any(const std::string& name, const std::vector<std::string>& globs);
// A parameter a recipe trains beside the model ("distill.*", models/decoder_lm.h TrainingExtras):
// in checkpoints, never in model files or exports.
inline bool is_training_only_name(const std::string& name) { return name.rfind("distill.", 0) == 0; }

class ParamStore {
 public:
  // Register a parameter held whole on this rank. Returns a stable pointer whose value/grad are
  // filled in by allocate().
  Param* add(const std::string& name, const Shape& shape, ParamInit init, float init_std = 0.0f,
             bool weight_decay = true);
  // Register the slice [offset, offset + local_shape) of a sharded parameter (2-D at most).
  Param* add_slice(const std::string& name, const Shape& global_shape, const Shape& local_shape,
                   const Shape& local_offset, ParamInit init, float init_std = 0.0f, bool weight_decay = true);
  // Lay out and allocate the flat value/grad buffers (grads zeroed, values initialised); set
  // Param::trainable before.
  // Each parameter draws from its own named stream Rng(seed, "init:" + name) over its GLOBAL
  // shape and keeps its slice, so its values depend neither on the other parameters nor on the
  // parallel layout.
  // Each region is padded with zeros to a multiple of its alignment (the sizes of the groups
  // that shard it: DP x CP for dense, expert-DP for experts).
  void allocate(uint64_t seed, int64_t dense_alignment = 1, int64_t expert_alignment = 1);

  std::deque<Param>& params() { return params_; }
  const std::deque<Param>& params() const { return params_; }
  Param* find(const std::string& name);
  int64_t numel() const { return total_; }  // every value: both regions, padding and the frozen ones
  // Elements of the gradient buffer: the trainable parameters of both regions, padding included.
  int64_t grad_numel() const { return trainable_end_; }
  // [begin, end) of a region of trainable parameters in the flat buffers; expert = false: the dense region.
  int64_t region_begin(bool expert) const { return expert ? dense_end_ : 0; }
  int64_t region_end(bool expert) const { return expert ? trainable_end_ : dense_end_; }
  float* values() { return values_.data(); }
  float* grads() { return grads_.data(); }
  void zero_grads();
  // bf16 compute: a bf16 copy of every value, laid out like values() and pointed to by each
  // Param::value_bf16. Its contents are the caller's (refreshed from the fp32 master values after
  // every change to them).
  void allocate_bf16_copy();
  bf16_t* values_bf16() { return values_bf16_.data(); }

 private:
  std::deque<Param> params_;
  std::vector<float> values_, grads_;
  std::vector<bf16_t> values_bf16_;
  int64_t total_ = 0, dense_end_ = 0, trainable_end_ = 0;
};

}  // namespace ff
