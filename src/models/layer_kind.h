// Layer kinds (DESIGN decision 11): each character of the layer pattern ('*' attention, '-' dense
// MLP, 'E' MoE, 'M' Mamba2) is one layer h <- h + Mixer(Norm(h)) (specs/methods.md §3.1), and each
// kind declares in one place everything about its mixer: how it is built, run forward and backward
// and decoded (the Mixer interface below), and how it is counted (parameters, one rank's share of
// them, saved activation bytes, FLOPs, communication) and checked against a parallel layout. The
// kinds live in models/kinds/, one file each; the registry (layer_kind.cpp) lists them. The
// decoder LM, the parameter count, `fivefold plan`, the MFU formula and the Hugging Face
// conversion (models/hf_convert.h) read only these descriptors, so a new kind is one new file and
// one registry line.
// Legend: B sequences, S positions, N = B*S rows of the full stream, Nl the rows held here
// (N / TP under sequence parallelism), D width.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/param.h"
#include "core/profile.h"
#include "layers/compute.h"
#include "layers/importance.h"
#include "layers/linear.h"
#include "layers/model_config.h"
#include "layers/tensor_parallel.h"
#include "models/hf_tables.h"
#include "models/prune_keep.h"
#include "parallel/grid.h"

namespace ff {

class MoeLayer;

// What forward returns for one micro-batch: the MoE layers' statistics; `loss` is the objective's
// value, filled in by whoever evaluates the objective (train/objective.h, the pipeline executor).
struct ForwardResult {
  double loss = 0;
  int64_t valid_tokens = 0;          // rows with a target (over the CP ranks), set with loss
  double aux_loss = 0, z_loss = 0;  // summed over MoE layers
  std::vector<int64_t> expert_load;  // [moe layers * E] rows per expert
  int64_t routed_slots = 0, dropped_slots = 0;
  int64_t sent_rows = 0;             // rows the MoE dispatches sent to other EP ranks (this rank)
};

// The rows a mixer sees in training: B sequences of S positions held here (S / CP under context
// parallelism), positions [B*S] of each row in its sequence.
struct MixerBatch {
  int64_t B = 0, S = 0;
  const int32_t* positions = nullptr;
  int64_t rows() const { return B * S; }
};

// A layer's mixer: the part between its pre-norm and its residual add. Forward and backward are
// explicit (DESIGN decision 1); what backward needs goes into a Saved record the caller owns, one
// per micro-batch in flight (decision 2); the inference path keeps a DecodeState per layer (the
// KV cache of attention, the conv and SSM states of Mamba).
class Mixer {
 public:
  struct Saved {
    virtual ~Saved() = default;
  };
  struct DecodeState {
    virtual ~DecodeState() = default;
  };
  virtual ~Mixer() = default;

  virtual std::unique_ptr<Saved> new_saved() const = 0;
  // out [Nl, D] overwritten from the normalised input xn [Nl, D]; statistics (MoE) add to res.
  virtual void forward(Saved& s, float* out, const float* xn, const MixerBatch& b, Arena& arena,
                       ForwardResult& res) = 0;
  // dxn [Nl, D] overwritten from dout [Nl, D]; parameter gradients accumulate. loss_scale scales
  // the gradients of the layer's own losses (the MoE aux and z-losses).
  virtual void backward(float* dxn, const float* dout, const float* xn, Saved& s, const MixerBatch& b,
                        float loss_scale, Arena& scratch) = 0;

  // The inference path: state for B sequences of up to `capacity` positions (null: none needed).
  virtual std::unique_ptr<DecodeState> new_decode_state(int64_t B, int64_t capacity) const = 0;
  // Rows b T + t of xn are the new tokens of sequence b at positions start + t; out overwritten;
  // saves nothing but the state.
  virtual void decode(DecodeState* state, float* out, const float* xn, int64_t B, int64_t T, int64_t start,
                      Arena& scratch) = 0;

  // Pruning importance (layers/importance.h): adds the statistics of the last forward on s to the
  // entries its kind's declare_importance declared (none by default).
  virtual void add_importance(const Saved&, const ImportanceSite&, ImportanceStats&) const {}

  virtual MoeLayer* moe() { return nullptr; }
  // The experts the last forward on s chose for each row, [rows, K] (empty: not a routing layer).
  virtual std::span<const int32_t> routed_experts(const Saved&) const { return {}; }
};

// What building one layer's mixer needs.
struct MixerContext {
  ParamStore& params;
  Compute& compute;
  const ModelConfig& cfg;
  const ParallelGrid& grid;
  TensorParallel tp;
  const Communicator* cp;  // null: no context parallelism
  const LoraOptions& lora;
  std::string prefix;      // the layer's name prefix, e.g. "model.layers.3"
  float init_std, out_init_std;
  Profile* profile;
};

// One rank's parameters of a layer's mixer (norm excluded): dense and expert values, and the
// expert parameters that train under LoRA (the routed experts' adapters).
struct RankParameters {
  double dense = 0, expert = 0, expert_adapters = 0;
};

// Bytes and latency-bound steps a layer's collectives cost per micro-batch, forward + backward.
struct LayerTraffic {
  double bytes = 0, steps = 0;
};

struct LayerKindInfo {
  char symbol;           // its character in the layer pattern
  LayerKind kind;
  const char* name;      // for messages: "attention", "MLP", ...
  const char* norm;      // the pre-norm's name in the layer: "<prefix>.<norm>.weight"
  int profile_slot;      // core/profile.h; < 0: the mixer times its own parts
  // Parameters of one layer's mixer (norm excluded, adapters included), one replica before any
  // sharding; experts_counted: routed experts counted (E for the total, K for the active ones).
  int64_t (*parameters)(const ModelConfig& c, int64_t experts_counted);
  // One rank's share under layout p.
  RankParameters (*rank_parameters)(const ModelConfig& c, const ParallelConfig& p);
  // Bytes one micro-batch of B sequences saves for backward in the mixer on one rank.
  double (*activation_bytes)(const ModelConfig& c, const ParallelConfig& p, int64_t B);
  // Model FLOPs of forward + backward over `sequences` sequences of S tokens (the MFU formula).
  double (*training_flops)(const ModelConfig& c, int64_t sequences, int64_t S);
  // The collectives of one micro-batch of B sequences (forward + backward) on one rank.
  LayerTraffic (*traffic)(const ModelConfig& c, const ParallelConfig& p, int64_t B);
  // Reasons this kind cannot run under layout p, each naming the fields (appended to e).
  void (*layout_problems)(const ModelConfig& c, const ParallelConfig& p, std::vector<std::string>& e);
  // The layer's tensors in the Hugging Face family's files, pre-norm included (models/hf_tables.h:
  // names relative to the layer's HF block and fivefold prefixes); empty: the family has no such
  // layer, or none fivefold writes.
  std::vector<HfRule> (*hf_rules)(HfFamily family, const ModelConfig& c);
  std::unique_ptr<Mixer> (*build)(const MixerContext& ctx);
  // Structured pruning (specs/methods.md §3.5-3.6; models/prune_keep.h): the layer's importance
  // entries, what it keeps of them for targets t, and the pruned layer's tensor `name` cut from
  // the unpruned model's (false: not one of this kind's).
  void (*declare_importance)(const ModelConfig& c, const std::string& prefix, ImportanceStats& stats);
  LayerKeep (*prune_keep)(const ModelConfig& c, const ImportanceStats& stats, const std::string& prefix,
                          const PruneTargets& t);
  bool (*prune_tensor)(const LayerPrune& p, const TensorSource& source, const std::string& name, HostTensor& out);
};

// The descriptor of a kind / of a pattern character (null: no such kind).
const LayerKindInfo& layer_kind(LayerKind kind);
const LayerKindInfo* layer_kind_of(char symbol);

// Ring cost of an all-reduce of `bytes` over n ranks: 2 (n - 1) / n bytes each.
inline double ring_bytes(double bytes, double n) { return n > 1 ? 2 * (n - 1) / n * bytes : 0.0; }

}  // namespace ff
