// DecoderLM: a decoder-only language model assembled from the layer pattern. The body: token
// embedding -> per layer (pre-norm, then the layer kind's mixer: attention, dense MLP, MoE or
// Mamba2, models/layer_kind.h; then the residual add) -> final norm. The head: the vocabulary-parallel LM head (layers/lm_head.h), which gives the logits
// and, for rows with a target, log p(target). The objective is not here: a token-level objective
// (train/objective.h) reads the per-row log-probs (target_logprobs) and hands back their gradient
// to backward. Forward and backward are explicit; everything one micro-batch needs for backward
// lives in a MicroBatch record owned by the caller, so several micro-batches can be in flight.
// Legend: B sequences, S positions, N = B*S, D width, V vocab.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/param.h"
#include "core/profile.h"
#include "layers/compute.h"
#include "layers/importance.h"
#include "layers/lm_head.h"
#include "layers/moe/moe_layer.h"
#include "layers/norm.h"
#include "layers/value_head.h"
#include "models/layer_kind.h"
#include "parallel/grid.h"

namespace ff {

// What backward starts from on the last stage: a token-level objective's d loss / d value per row
// (HeadRows::value: log p(target), or the value head's scalar), or a distribution objective's
// gradient of the logits [rows, V / TP] themselves, with optionally that of the head's hidden
// state (DecoderLM::head_hidden, rows x head_hidden_width; the same on every TP rank).
struct HeadGradient {
  const float* dlogp = nullptr;  // per row: d loss / d HeadRows::value
  const float* dlogits = nullptr;
  const float* dhidden = nullptr;
  HeadGradient(const float* dlogp_rows = nullptr) : dlogp(dlogp_rows) {}  // NOLINT: a dlogp is the common case
  static HeadGradient of_logits(const float* d, const float* dhidden = nullptr) {
    HeadGradient g;
    g.dlogits = d;
    g.dhidden = dhidden;
    return g;
  }
};

// Trainable parameters a recipe adds to a model for its training only: named "distill.*", kept in
// checkpoints (a run resumes with them) and never in model files.
struct TrainingExtras {
  // Distillation's intermediate loss compares the head's input h [rows, D] (the final norm's
  // output) with a teacher's of width Dt != D through a learned map distill.projection.weight
  // [Dt, D]: head_hidden = h W^T. 0: no map (head_hidden = h).
  int64_t hidden_projection = 0;
};

// The head's output per row for a token-level objective: this rank's rows of one micro-batch.
struct HeadRows {
  // [B*S, width] per row: the LM head's log p(target) (0 where the target is -1; width 1), or
  // the value head's values (model.head = value; width model.value_outputs).
  const float* value = nullptr;
  const int32_t* targets = nullptr;    // [B*S]; -1 = no target (a masked or padding position)
  const int32_t* positions = nullptr;  // [B*S] each row's position in its sequence
  int64_t B = 0, S = 0;                // S: rows of each sequence held here (S / CP under context parallelism)
  const Communicator* cp = nullptr;    // each sequence's rows are spread over this group; null: all here
  int64_t micro_batch = 0;             // its index in the step (set by the pipeline executor)
  int64_t width = 1;                   // values per row (and gradients: dlogp is [B*S, width])
};

class DecoderLM {
 public:
  // frozen: globs of parameter names (core/param.h) that get no gradient and no optimizer state.
  DecoderLM(const ModelConfig& cfg, const ParallelGrid& grid, uint64_t seed, const std::vector<std::string>& frozen = {},
            const TrainingExtras& extras = {});
  DecoderLM(const DecoderLM&) = delete;
  DecoderLM& operator=(const DecoderLM&) = delete;

  // Per-micro-batch state: saved activations in an arena (reused pass after pass) and the layer records.
  struct MicroBatch {
    Arena arena;                 // activations saved by forward
    Arena scratch;               // backward temporaries, rewound after every layer
    int64_t B = 0, S = 0;
    const int32_t* tokens = nullptr;
    const int32_t* targets = nullptr;
    std::vector<int32_t> positions;
    std::vector<int32_t> local_tokens, local_targets;  // this CP rank's rows (context parallelism)
    std::vector<Tensor> resid;   // [L + 1] x [N, D]: input of layer j, and the final output
    std::vector<Norm::Saved> norms;
    std::vector<std::unique_ptr<Mixer::Saved>> mixer;  // per pattern layer held here
    Norm::Saved final_norm;
    LmHead::Saved head;
    ValueHead::Saved value;  // model.head = value
    const float* head_in = nullptr;  // [rows, D] the head's input, whole rows on every TP rank (last stage)
    Tensor hidden_projected;         // [rows, Dt] head_in W^T (TrainingExtras::hidden_projection)
  };

  std::unique_ptr<MicroBatch> new_micro_batch() const;

  // tokens/targets [B*S]; a target of -1 has no log-prob (masked). targets may be null: logits
  // only (inference). The whole model (one pipeline stage).
  // positions [B*S]: each row's position; null = 0 .. S-1 in every sequence. Packed sequences
  // restart at 0 for each example, which then attends only within itself (layers/attention.h).
  ForwardResult forward(MicroBatch& mb, const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S,
                        const int32_t* positions = nullptr);
  // Gradients of objective_scale * objective + moe_scale * (the MoE losses) accumulate into the
  // parameter grads, where dlogp[rows] = d objective / d logp of head_rows(mb).
  void backward(MicroBatch& mb, HeadGradient g, float objective_scale, float moe_scale);
  // The last forward's per-row target log-probs (last pipeline stage, forward with targets).
  HeadRows head_rows(const MicroBatch& mb) const;
  // The last forward's logits [rows, V / TP] (all rows; forward with targets and head_chunk_rows
  // = 0), for distribution objectives; rows as in target_logprobs.
  float* head_logits(MicroBatch& mb);
  // Their log-sum-exp over the whole vocabulary, per row [rows] (the same forward).
  const float* head_lse(const MicroBatch& mb) const;
  // The last forward's hidden state at the head [rows, head_hidden_width()]: the final norm's
  // output, or its learned projection (TrainingExtras::hidden_projection). Last stage.
  const float* head_hidden(const MicroBatch& mb) const;
  int64_t head_hidden_width() const { return projection_ ? projection_->global_shape[0] : cfg_.d_model; }
  // The vocabulary shard this rank's logits hold, and the TP group they are sharded over (null: one).
  int64_t vocab_shard() const { return head_ ? head_->local_shape[0] : 0; }
  int64_t vocab_offset() const { return head_ ? head_->local_offset[0] : 0; }
  const Communicator* vocab_group() const { return tp_.active() ? tp_.group : nullptr; }

  // Pipeline parallelism: this rank holds model chunks 0 .. num_chunks() - 1; chunk c is virtual
  // stage c P + p and holds the pattern layers of chunk_range(c). Virtual stage 0 also embeds the
  // tokens, the last one also computes the loss.
  struct ChunkRange {
    int64_t begin, end;  // pattern layers [begin, end)
    bool first, last;    // virtual stage 0 / the last virtual stage
  };
  ChunkRange chunk_range(int64_t chunk) const;
  int64_t num_chunks() const { return chunks_; }
  // Forward of one chunk. input: the previous virtual stage's output [stream_rows, D] (kept alive by
  // the caller until this micro-batch's backward), null on virtual stage 0. Every chunk gets the
  // micro-batch's tokens and targets; chunk 0 must run first for each micro-batch.
  ForwardResult forward_chunk(MicroBatch& mb, int64_t chunk, const int32_t* tokens, const int32_t* targets,
                              int64_t B, int64_t S, const float* input, const int32_t* positions = nullptr);
  // The chunk's output activation [stream_rows, D] for the next virtual stage.
  const float* chunk_output(const MicroBatch& mb, int64_t chunk) const;
  // Backward of one chunk. dout: gradient of its output (null on the last virtual stage); dlogp:
  // the objective's gradient (the last virtual stage only; scales as in backward). Returns the
  // gradient of its input for the previous virtual stage (null on virtual stage 0).
  const float* backward_chunk(MicroBatch& mb, int64_t chunk, const float* dout, HeadGradient g,
                              float objective_scale, float moe_scale);
  // Rows of the residual stream this rank holds for B sequences of S (after CP and SP splits).
  int64_t stream_rows(int64_t B, int64_t S) const;
  // [N, V] logits of the last forward (valid until the next forward on mb; consumed by backward).
  const float* logits(const MicroBatch& mb) const;

  // The inference path (DESIGN decision 14): B sequences decoded together; each call appends T
  // new tokens per sequence at positions length .. length + T - 1, saving nothing but the keys and
  // values of the attention layers and the recurrent states of the Mamba layers held here. Pipeline stages run their chunks in order (each
  // chunk's output goes to the next virtual stage, as in training); the last one gives the logits
  // of every sequence's newest position over the whole vocabulary.
  struct Decoder {
    int64_t B = 0, capacity = 0, length = 0;  // sequences, cache positions, positions filled
    std::vector<std::unique_ptr<Mixer::DecodeState>> state;  // per pattern layer held here (null: none)
    Arena arena;                             // one step's activations, rewound at chunk 0
    Norm::Saved norm;
    std::vector<float> logits;               // [B, V] (last virtual stage)
  };
  // B must be a multiple of TP under sequence parallelism (pad the batch); capacity <= seq_len.
  std::unique_ptr<Decoder> new_decoder(int64_t B, int64_t capacity) const;
  // tokens [B*T] (row b*T + t: sequence b's t-th new token); input: the previous virtual stage's
  // output (null on virtual stage 0). Returns this chunk's output for the next virtual stage.
  // After the last virtual stage, d.logits holds [B, V]; the caller then calls advance(d, T).
  const float* decode_chunk(Decoder& d, int64_t chunk, const int32_t* tokens, int64_t T, const float* input);
  void advance(Decoder& d, int64_t T) const { d.length += T; }

  // With tied embeddings over several pipeline stages: sum the embedding's gradient of the first
  // stage and its copy's on the last (all pipeline ranks call it, after the last backward).
  void synchronize_tied_embeddings();
  // Once per optimizer step, after its last backward: apply the aux-loss-free expert-bias update
  // and restart the global-batch balancing loss's running counts (layers/moe/router.h).
  void end_of_step();

  const ModelConfig& config() const { return cfg_; }
  // Evaluation mode (no dropout) for the forwards that follow, until set back; the inference path
  // is always in evaluation mode.
  void set_training(bool on) { compute_.set_training(on); }
  // LoRA adapters on or off for the forwards (and their backwards) that follow: off, the model is
  // its frozen base (the reference of DPO and PPO under LoRA, with no second copy of the weights).
  void set_adapters(bool on) { compute_.set_adapters(on); }
  bool adapters_on() const { return compute_.adapters_on(); }
  // Time per component of forward and backward (off unless profile().on is set).
  Profile& profile() { return profile_; }
  ParamStore& params() { return params_; }
  // Whoever changes parameter values (the optimizer step, a checkpoint load, an import) calls this;
  // under bf16 compute the next forward then refreshes the weights' bf16 copy from them.
  void mark_values_changed() { compute_weights_stale_ = true; }
  const ParamStore& params() const { return params_; }
  std::vector<MoeLayer*> moe_layers();
  // The experts the last forward on mb chose for each row, MoE layer after MoE layer ([rows, K] each).
  std::vector<int32_t> routed_experts(const MicroBatch& mb) const;
  // Training state that is not a parameter: the routers' expert-bias buffers of the layers held
  // here, by global name; `writer` marks the one replica (TP rank 0, first DP x CP replica) that
  // writes each to checkpoints.
  struct NamedBuffer {
    std::string name;
    std::vector<float>* data;
    bool writer;
  };
  std::vector<NamedBuffer> state_buffers();

  // Pruning importance (layers/importance.h, specs/methods.md §3.5). declare_importance declares
  // the entries of the whole model (every rank alike): per layer "<prefix>.<its norm>" (the
  // pre-norm's output, for the embedding channels; its mean under the same name: 1 - cos(h_in,
  // h_out) for depth) and its kind's own. add_importance adds what the last forward on mb saw, for the layers held here.
  void declare_importance(ImportanceStats& stats) const;
  void add_importance(const MicroBatch& mb, ImportanceStats& stats) const;

 private:
  struct Layer {
    const LayerKindInfo* kind;
    std::unique_ptr<Norm> norm;    // null: another pipeline stage's layer
    std::unique_ptr<Mixer> mixer;
  };
  void prepare(MicroBatch& mb, const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S,
               const int32_t* positions);

  ModelConfig cfg_;
  Profile profile_;
  int64_t pp_rank_ = 0, pp_size_ = 1, chunks_ = 1;
  bool tied_across_stages_ = false;
  bool first_replica_ = true;  // TP rank 0 of the first DP x CP replica
  const Communicator* pp_ = nullptr;
  TensorParallel tp_;
  const Communicator* cp_ = nullptr;  // context-parallel group, null when CP = 1
  Compute compute_;
  bool compute_weights_stale_ = true;
  ParamStore params_;
  Param* embedding_ = nullptr;  // first pipeline stage only
  std::vector<Layer> layers_;
  std::unique_ptr<Norm> final_norm_;
  Param* head_ = nullptr;  // last pipeline stage only; == embedding_ when tied
  std::unique_ptr<LmHead> lm_head_;        // model.head = lm (last stage)
  std::unique_ptr<ValueHead> value_head_;  // model.head = value (last stage)
  Param* projection_ = nullptr;            // TrainingExtras::hidden_projection (last stage)
  void add_hidden_gradient(float* dhead_in, const float* dhidden, MicroBatch& mb, float scale);
};

// Every reason this model cannot run under this parallel layout (sizes that do not divide, unsupported
// combinations), each naming the fields; empty = it can. Pure: `fivefold plan` uses it too.
std::vector<std::string> layout_problems(const ModelConfig& cfg, const ParallelConfig& pc);

// The name prefix of pattern layer j: "model.layers.{b}", where b pairs an attention layer with
// the MLP/MoE layer after it (Hugging Face block numbering) when the pattern alternates, and is
// j otherwise.
std::string layer_prefix(const std::string& pattern, size_t j);

}  // namespace ff
