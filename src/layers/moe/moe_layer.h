// MoE layer (specs/parallelism-and-moe.md §7.1): router -> capacity dropping -> dispatch ->
// experts -> combine, plus an optional shared expert (optionally sigmoid-gated) added after the
// combine. Legend: N tokens, D width, E experts, K top-k, R dispatched rows.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/profile.h"
#include "layers/mlp.h"
#include "layers/moe/dispatcher.h"
#include "layers/moe/experts.h"
#include "layers/moe/router.h"
#include "parallel/grid.h"

namespace ff {

// Per-layer routing statistics of one micro-batch, for the metrics line.
struct MoeStats {
  double aux_loss = 0, z_loss = 0;
  int64_t routed_slots = 0, dropped_slots = 0;  // (token, expert) pairs chosen / dropped by capacity
  std::vector<int64_t> tokens_per_expert;       // rows each expert computed (kept, without pads)
  int64_t sent_rows = 0;  // rows of width D the dispatch sent to other EP ranks (the combine returns as many)
};

class MoeLayer {
 public:
  MoeLayer(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg, const ParallelGrid& grid,
           float init_std, float out_init_std, const LoraOptions& lora = {});

  struct Saved {
    Router::Saved router;
    std::vector<uint8_t> keep;  // [N, K] capacity mask (empty when dropless)
    DispatchState dispatch;
    Experts::Saved experts;
    Tensor expert_out;          // [R, D]
    Mlp::Saved shared;
    Tensor shared_out;          // [N, D] ungated shared-expert output
    Tensor shared_gate;         // [N] sigmoid gate values
    MoeStats stats;
  };
  // N_full: rows of the whole stream, `sequences` sequences of N_full / sequences rows each; x and
  // out hold this rank's tp.local_rows(N_full) of them (its sequence-parallel share; it routes
  // those tokens). out overwritten. The load-balancing loss is computed only while the Compute is
  // training.
  void forward(Saved& s, float* out, const float* x, int64_t N_full, int64_t sequences, Arena& arena);
  // dx overwritten. loss_scale scales the aux/z-loss gradients (1 / micro-batches).
  void backward(float* dx, const float* dout, const float* x, const Saved& s, int64_t N_full, float loss_scale,
                Arena& scratch);

  Router& router() { return router_; }
  void set_profile(Profile* profile) { profile_ = profile; }

 private:
  const ModelConfig& cfg_;
  const Compute& compute_;
  TensorParallel tp_;
  Router router_;
  Experts experts_;
  std::optional<Mlp> shared_;
  Param* shared_gate_ = nullptr;  // [1, D]
  std::unique_ptr<TokenDispatcher> dispatcher_;
  Profile* profile_ = nullptr;  // the owning model's (null: not profiled)
};

}  // namespace ff
