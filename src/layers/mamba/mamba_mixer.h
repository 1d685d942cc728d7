// The Mamba2 mixer (specs/methods.md §3.2): in_proj -> z | x | B | C | dt; causal depthwise conv
// + SiLU over x | B | C; Δ = softplus(dt + dt_bias); the SSD scan (kernels/cpu/ssd_scan.h) with
// A = -exp(A_log) and the D skip; the gated RMSNorm per group, norm after the gate; out_proj.
// in_proj's five segments are five parameters registered adjacently (one fused GEMM, like q|k|v),
// the conv's three (x, B, C) likewise, so each segment is sliced on its own under TP.
// Tensor parallelism splits the heads and the groups: TP rank t holds heads [t H/TP, (t+1) H/TP)
// with their groups [t G/TP, ...) (a head's group stays on its rank because heads of a group are
// contiguous), the matching rows of in_proj (column-parallel), channels of the conv, dt_bias,
// A_log, D and the norm (each rank normalises its own groups), and columns of out_proj
// (row-parallel). Context parallelism (layers/mamba/mamba_cp.h) hands each CP rank whole
// sequences of 1 / CP of those heads and groups around the conv, the scan and the norm (its
// "share"; without CP the share is the whole TP slice). Packed sequences (positions restarting at
// 0) restart the conv and the scan at each example.
// Legend: B sequences, S positions, N = B*S rows, D width; H heads of P channels, G groups of
// state Ns, di = H P, Ch = di + 2 G Ns conv channels, W = 2 di + 2 G Ns + H in_proj width, K conv
// width, Q chunk; local sizes (divided by TP) where a rank holds a slice. Input and output hold
// tp.local_rows(N) rows.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/param.h"
#include "core/profile.h"
#include "kernels/cpu/ssd_scan.h"
#include "layers/compute.h"
#include "layers/importance.h"
#include "layers/linear.h"
#include "layers/model_config.h"
#include "layers/tensor_parallel.h"

namespace ff {

class MambaMixer {
 public:
  // prefix e.g. "model.layers.0.mixer".
  MambaMixer(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg, float init_std,
             float out_init_std, TensorParallel tp = {}, const Communicator* cp = nullptr, const LoraOptions& lora = {});

  // Rows: N of the TP region (this CP rank's); under CP the share's tensors hold every position
  // of the B sequences (N x CP rows) with the share's channels (sizes of the share, below).
  struct Saved {
    Tensor x_op;     // [N, D] in_proj's input (the gathered stream under SP), as a GEMM operand
    Tensor zxbcdt;   // [rows, W] in_proj's output (fp32), the share's columns
    Tensor conv_u;   // [rows, Ch] the conv's pre-activation
    Tensor xbc;      // [rows, Ch] x | B | C after conv + SiLU
    Tensor delta;    // [rows, H] Δ
    Tensor states;   // [chunks of all segments, H, P, Ns] the states entering each chunk
    Tensor y;        // [rows, di] the scan's output
    Tensor rstd;     // [rows, G] the gated norm's statistics
    Tensor v_op;     // [N, di] the normed output, as out_proj's operand (this rank's rows)
    std::vector<int64_t> segments;  // row starts of the sequences scanned, and N at the end
    int64_t B = 0, S = 0;
    Linear::Saved in_lora, out_lora;
  };
  // out[Nl, D] overwritten; positions[N] restart at 0 at each (packed) sequence (not under CP).
  void forward(Saved& s, float* out, const float* x, const int32_t* positions, int64_t B, int64_t S,
               Arena& arena) const;
  // dx[Nl, D] overwritten; parameter gradients accumulate.
  void backward(float* dx, const float* dout, const Saved& s, int64_t N, Arena& scratch) const;

  // The inference path's recurrent state of B sequences: conv [B, Ch, K-1] (the last K-1 inputs)
  // and ssm [B, H, P, Ns].
  struct State {
    int64_t B = 0;
    std::vector<float> conv, ssm;
  };
  State new_state(int64_t B) const;
  // Times its projections and its conv + scan separately (core/profile.h; null: not profiled).
  void set_profile(Profile* profile) { profile_ = profile; }
  // Pruning importance (specs/methods.md §3.5): the x segment of in_proj's output, this rank's
  // share of the heads [H P] of whole sequences, to entry `name` (all heads of the layer).
  void add_importance(const Saved& s, const std::string& name, ImportanceStats& st) const;
  // Rows b T + t of x are the new tokens of sequence b at positions start + t (start = 0: a fresh
  // sequence; the state is reset). out overwritten; saves nothing but the state.
  void decode(State& st, float* out, const float* x, int64_t B, int64_t T, int64_t start, Arena& scratch) const;

 private:
  // The heads and groups this rank's conv, scan and norm cover: part `part` of `parts` (CP) of
  // its TP slice, with the z | x | B | C | dt segment structure of in_proj's output.
  struct Share {
    int64_t H, G, di, gn, Ch, W, part, parts;
  };
  // The share's parameter values: the conv's x, B, C rows gathered under CP, the rest offsets.
  struct ShareWeights {
    const float *conv_w, *conv_b, *dt_bias, *a_log, *d, *norm;
  };
  ShareWeights share_weights(Arena& arena) const;
  std::vector<int64_t> in_proj_segments() const;  // TP-local widths of z, x, B, C, dt
  // The share's rows [rows, W] of in_proj's output [N, W_tp] (a view without CP), and back.
  const float* to_share(const float* zxbcdt, const std::vector<int64_t>& segments, int64_t B, int64_t N,
                        Arena& arena) const;
  const float* from_share(const float* share, const std::vector<int64_t>& segments, int64_t B, int64_t N,
                          Arena& arena) const;
  cpu::ScanSizes sizes(int64_t batch, int64_t len) const;
  // The conv and the scan run over whole sequences in one call, or over packed examples one
  // segment at a time: run(first row, sizes, first saved chunk) for each call.
  void for_each_scan(const Saved& s, const std::function<void(int64_t, const cpu::ScanSizes&, int64_t)>& run) const;
  cpu::ScanStrides strides() const { return {sh_.Ch, sh_.H, sh_.Ch, sh_.Ch}; }
  const float* negative_a(const float* a_log, Arena& arena) const;  // A = -exp(A_log) [share H]
  // The gated norm and out_proj: out [Nl, D] from the scan's output y [rows, di] and z (zxbcdt's
  // first di columns), B sequences; s (null when decoding) keeps what backward needs.
  void output(float* out, const float* y, const float* zxbcdt, const ShareWeights& w, int64_t B, int64_t N, Saved* s,
              Arena& arena) const;

  int64_t D_, H_, P_, G_, Ns_, K_, di_, Ch_, W_;  // sizes of the TP slice
  Share sh_;
  const Communicator* cp_;  // null: no context parallelism
  Profile* profile_ = nullptr;
  float eps_, dt_lo_, dt_hi_;
  int64_t chunk_;
  TensorParallel tp_;
  Compute* compute_;
  Linear in_proj_;   // column-parallel z | x | B | C | dt: [W, D] as one matrix
  std::vector<Param*> conv_w_;  // x, B, C segments, adjacent: [Ch, K]
  std::vector<Param*> conv_b_;  // x, B, C segments, adjacent: [Ch]
  Param* dt_bias_;   // [H]
  Param* a_log_;     // [H]
  Param* d_;         // [H]
  Param* norm_;      // [di]
  Linear out_proj_;  // row-parallel [D, di]
};

}  // namespace ff
