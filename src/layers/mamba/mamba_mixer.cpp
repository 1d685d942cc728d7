#include "layers/mamba/mamba_mixer.h"

#include <cmath>
#include <cstring>
#include <functional>

#include "kernels/cpu/causal_conv1d.h"
#include "kernels/cpu/norm.h"
#include "layers/mamba/mamba_cp.h"

namespace ff {

namespace {

// Rows where a sequence starts: every S rows, and wherever a packed example restarts at 0.
std::vector<int64_t> sequence_starts(const int32_t* positions, int64_t B, int64_t S) {
  std::vector<int64_t> starts;
  for (int64_t r = 0; r < B * S; ++r)
    if (r % S == 0 || (positions && positions[r] == 0)) starts.push_back(r);
  starts.push_back(B * S);
  return starts;
}

}  // namespace

MambaMixer::MambaMixer(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg,
                       float init_std, float out_init_std, TensorParallel tp, const Communicator* cp,
                       const LoraOptions& lora)
    : D_(cfg.d_model),
      H_(cfg.mamba_num_heads / tp.size()),
      P_(cfg.mamba_head_dim),
      G_(cfg.mamba_groups / tp.size()),
      Ns_(cfg.mamba_state),
      K_(cfg.mamba_conv_kernel),
      di_(H_ * P_),
      Ch_(di_ + 2 * G_ * Ns_),
      W_(2 * di_ + 2 * G_ * Ns_ + H_),
      cp_(cp && cp->size() > 1 ? cp : nullptr),
      eps_(static_cast<float>(cfg.norm_eps)),
      dt_lo_(static_cast<float>(cfg.mamba_dt_limit_min)),
      dt_hi_(static_cast<float>(cfg.mamba_dt_limit_max)),
      chunk_(cfg.mamba_chunk),
      tp_(tp),
      compute_(&compute),
      in_proj_(store, compute, Placement::column, tp, cfg.d_model,
               {{prefix + ".in_proj_z", cfg.mamba_inner(), lora.adapts("in_proj")},
                {prefix + ".in_proj_x", cfg.mamba_inner(), lora.adapts("in_proj")},
                {prefix + ".in_proj_B", cfg.mamba_groups * cfg.mamba_state, lora.adapts("in_proj")},
                {prefix + ".in_proj_C", cfg.mamba_groups * cfg.mamba_state, lora.adapts("in_proj")},
                {prefix + ".in_proj_dt", cfg.mamba_num_heads, lora.adapts("in_proj")}},
               init_std, lora),
      out_proj_(store, compute, Placement::row, tp, cfg.mamba_inner(), {{prefix + ".out_proj", cfg.d_model, lora.adapts("out_proj")}},
                out_init_std, lora) {
  const int64_t parts = cp_ ? cp_->size() : 1;
  FF_CHECK(cfg.mamba_groups % (tp.size() * parts) == 0,
           "model.mamba_groups = %lld is not divisible by parallel.tp x parallel.cp = %lld",
           (long long)cfg.mamba_groups, (long long)(tp.size() * parts));
  const int64_t Hs = H_ / parts, Gs = G_ / parts;
  sh_ = {Hs, Gs, Hs * P_, Gs * Ns_, Hs * P_ + 2 * Gs * Ns_, 2 * Hs * P_ + 2 * Gs * Ns_ + Hs, cp_ ? cp_->rank() : 0, parts};
  const int t = tp.rank();
  // A slice of a per-channel (or per-head) vector: rank t holds [t n, (t + 1) n).
  auto vec = [&](const std::string& name, int64_t global, ParamInit init, float scale) {
    const int64_t local = global / tp.size();
    return store.add_slice(name, Shape{global}, Shape{local}, Shape{t * local}, init, scale, false);
  };
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols, ParamInit init, float scale, bool decay) {
    const int64_t local = rows / tp.size();
    return store.add_slice(name, Shape{rows, cols}, Shape{local, cols}, Shape{t * local, 0}, init, scale, decay);
  };
  // PyTorch's Conv1d default (Kaiming-uniform with a = sqrt 5): U[-1/sqrt(fan_in), 1/sqrt(fan_in)],
  // fan_in = K for a depthwise conv; the bias alike.
  const float conv_bound = 1.0f / std::sqrt(static_cast<float>(K_));
  const int64_t di = cfg.mamba_inner(), gn = cfg.mamba_groups * cfg.mamba_state, H = cfg.mamba_num_heads;
  for (const auto& [seg, rows] : {std::pair<const char*, int64_t>{"x", di}, {"B", gn}, {"C", gn}})
    conv_w_.push_back(mat(prefix + ".conv1d_" + seg + ".weight", rows, K_, ParamInit::uniform, conv_bound, true));
  for (const auto& [seg, rows] : {std::pair<const char*, int64_t>{"x", di}, {"B", gn}, {"C", gn}})
    conv_b_.push_back(vec(prefix + ".conv1d_" + seg + ".bias", rows, ParamInit::uniform, conv_bound));
  for (size_t k = 1; k < 3; ++k) {  // each one matrix of x | B | C
    conv_w_[k]->fused_with_previous = true;
    conv_b_[k]->fused_with_previous = true;
  }
  // dt ~ log-uniform in [dt_min, dt_max], at least the floor; dt_bias = softplus^-1(dt) =
  // dt + log(-expm1(-dt)), so that softplus(0 + dt_bias) = dt at init.
  dt_bias_ = vec(prefix + ".dt_bias", H, ParamInit::draw, 0);
  const double lo = std::log(cfg.mamba_dt_min), hi = std::log(cfg.mamba_dt_max), floor = cfg.mamba_dt_init_floor;
  dt_bias_->draw = [lo, hi, floor](Rng& r) {
    const double dt = std::max(std::exp(lo + (hi - lo) * r.uniform()), floor);
    return static_cast<float>(dt + std::log(-std::expm1(-dt)));
  };
  a_log_ = vec(prefix + ".A_log", H, ParamInit::draw, 0);  // A ~ U[1, 16], stored as log A
  a_log_->draw = [](Rng& r) { return std::log(1.0f + 15.0f * r.uniform()); };
  d_ = vec(prefix + ".D", H, ParamInit::ones, 0);
  norm_ = vec(prefix + ".norm.weight", di, ParamInit::ones, 0);
}

void MambaMixer::for_each_scan(const Saved& s,
                               const std::function<void(int64_t, const cpu::ScanSizes&, int64_t)>& run) const {
  if (static_cast<int64_t>(s.segments.size()) == s.B + 1) {  // whole sequences: one call
    run(0, sizes(s.B, s.S), 0);
    return;
  }
  int64_t chunk_at = 0;
  for (size_t k = 0; k + 1 < s.segments.size(); ++k) {
    const cpu::ScanSizes sz = sizes(1, s.segments[k + 1] - s.segments[k]);
    run(s.segments[k], sz, chunk_at);
    chunk_at += sz.chunks();
  }
}

cpu::ScanSizes MambaMixer::sizes(int64_t batch, int64_t len) const {
  cpu::ScanSizes s;
  s.batch = batch;
  s.len = len;
  s.heads = sh_.H;
  s.head_dim = P_;
  s.groups = sh_.G;
  s.state = Ns_;
  s.chunk = chunk_;
  return s;
}

std::vector<int64_t> MambaMixer::in_proj_segments() const { return {di_, di_, G_ * Ns_, G_ * Ns_, H_}; }

MambaMixer::ShareWeights MambaMixer::share_weights(Arena& arena) const {
  const int64_t c = sh_.part;
  ShareWeights w{conv_w_[0]->value, conv_b_[0]->value, dt_bias_->value + c * sh_.H, a_log_->value + c * sh_.H,
                 d_->value + c * sh_.H, norm_->value + c * sh_.di};
  if (sh_.parts == 1) return w;
  // The conv's rows of the share: part c of each of its x, B, C parameters.
  float* conv_w = arena.alloc_f32(sh_.Ch * K_);
  float* conv_b = arena.alloc_f32(sh_.Ch);
  int64_t row = 0;
  for (size_t k = 0; k < 3; ++k) {
    const int64_t rows = k == 0 ? sh_.di : sh_.gn;
    std::memcpy(conv_w + row * K_, conv_w_[k]->value + c * rows * K_, sizeof(float) * static_cast<size_t>(rows * K_));
    std::memcpy(conv_b + row, conv_b_[k]->value + c * rows, sizeof(float) * static_cast<size_t>(rows));
    row += rows;
  }
  w.conv_w = conv_w;
  w.conv_b = conv_b;
  return w;
}

const float* MambaMixer::to_share(const float* zxbcdt, const std::vector<int64_t>& segments, int64_t B, int64_t N,
                                  Arena& arena) const {
  if (!cp_) return zxbcdt;
  int64_t width = 0;
  for (int64_t seg : segments) width += seg;
  float* out = arena.alloc_f32(N * width);  // N x CP rows of width / CP
  cp_rows_to_channels(out, zxbcdt, segments, B, N / B, *cp_, arena);
  return out;
}

const float* MambaMixer::from_share(const float* share, const std::vector<int64_t>& segments, int64_t B, int64_t N,
                                    Arena& arena) const {
  if (!cp_) return share;
  int64_t width = 0;
  for (int64_t seg : segments) width += seg;
  float* out = arena.alloc_f32(N * width);
  cp_channels_to_rows(out, share, segments, B, N / B, *cp_, arena);
  return out;
}

const float* MambaMixer::negative_a(const float* a_log, Arena& arena) const {
  float* a = arena.alloc_f32(sh_.H);
  for (int64_t h = 0; h < sh_.H; ++h) a[h] = -std::exp(a_log[h]);
  return a;
}

void MambaMixer::forward(Saved& s, float* out, const float* x, const int32_t* positions, int64_t B, int64_t S,
                         Arena& arena) const {
  const int64_t N = B * S;                 // this rank's rows
  const int64_t St = S * sh_.parts, R = B * St;  // the share's whole sequences
  const Share& q = sh_;
  ProfileScope proj_scope(profile_, kProfileMamba, false);  // the conv + scan below count apart
  s.x_op = compute_->operand(tp_.enter(x, N, D_, arena), N, D_, arena);
  float* zx_rows = arena.alloc_f32(N * W_);
  in_proj_.forward(zx_rows, s.x_op, N, &s.in_lora, arena);
  s.zxbcdt = arena.alloc(Shape{R, q.W});
  std::memcpy(s.zxbcdt.f32(), to_share(zx_rows, in_proj_segments(), B, N, arena),
              sizeof(float) * static_cast<size_t>(R * q.W));
  const float* zxbcdt = s.zxbcdt.f32();
  const ShareWeights w = share_weights(arena);
  s.conv_u = arena.alloc(Shape{R, q.Ch});
  s.xbc = arena.alloc(Shape{R, q.Ch});
  s.delta = arena.alloc(Shape{R, q.H});
  s.y = arena.alloc(Shape{R, q.di});
  s.segments = sequence_starts(cp_ ? nullptr : positions, B, St);
  s.B = B;
  s.S = St;
  int64_t chunks = 0;
  for_each_scan(s, [&](int64_t, const cpu::ScanSizes& sz, int64_t) { chunks += sz.batch * sz.chunks(); });
  s.states = arena.alloc(Shape{chunks, q.H * P_ * Ns_});
  cpu::dt_softplus_forward(s.delta.f32(), zxbcdt + 2 * q.di + 2 * q.gn, w.dt_bias, R, q.H, q.W, dt_lo_, dt_hi_);
  const float* A = negative_a(w.a_log, arena);
  Profile scan_time;  // subtracted from the projections' slot
  scan_time.on = profile_ && profile_->on;
  for_each_scan(s, [&](int64_t r0, const cpu::ScanSizes& sz, int64_t chunk_at) {
    ProfileScope scope(&scan_time, kProfileScan, false);
    float* xbc = s.xbc.f32() + r0 * q.Ch;
    cpu::causal_conv1d_silu_forward(xbc, s.conv_u.f32() + r0 * q.Ch, zxbcdt + r0 * q.W + q.di, w.conv_w, w.conv_b,
                                    sz.batch, sz.len, q.Ch, K_, q.W);
    cpu::ssd_scan_forward<float>(s.y.f32() + r0 * q.di, s.states.f32() + chunk_at * q.H * P_ * Ns_, nullptr, xbc,
                                 s.delta.f32() + r0 * q.H, A, xbc + q.di, xbc + q.di + q.gn, w.d, nullptr, sz,
                                 strides());
  });
  output(out, s.y.f32(), zxbcdt, w, B, N, &s, arena);
  if (profile_ && profile_->on) {
    profile_->forward[kProfileScan] += scan_time.forward[kProfileScan];
    profile_->forward[kProfileMamba] -= scan_time.forward[kProfileScan];
  }
}

void MambaMixer::output(float* out, const float* y, const float* zxbcdt, const ShareWeights& w, int64_t B, int64_t N,
                        Saved* s, Arena& arena) const {
  const int64_t R = N * sh_.parts;
  float* v = arena.alloc_f32(R * sh_.di);
  float* rstd = s ? (s->rstd = arena.alloc(Shape{R, sh_.G})).f32() : arena.alloc_f32(R * sh_.G);
  cpu::gated_rmsnorm_forward(v, rstd, y, zxbcdt, w.norm, eps_, R, sh_.di, sh_.G, sh_.W);
  const float* v_rows = from_share(v, {di_}, B, N, arena);
  const Tensor v_op = compute_->operand(v_rows, N, di_, arena);
  if (s) s->v_op = v_op;
  float* partial = tp_.active() ? arena.alloc_f32(N * D_) : out;  // row-parallel: partial sums
  out_proj_.forward(partial, v_op, N, s ? &s->out_lora : nullptr, arena);
  tp_.leave(out, partial, N, D_);
}

void MambaMixer::backward(float* dx, const float* dout, const Saved& s, int64_t N, Arena& scratch) const {
  const Share& q = sh_;
  const int64_t B = s.B, R = B * s.S, c = q.part;
  ProfileScope proj_scope(profile_, kProfileMamba, true);
  Profile scan_time;  // the conv + scan, counted apart
  scan_time.on = profile_ && profile_->on;
  const float* zxbcdt = s.zxbcdt.f32();
  const ShareWeights w = share_weights(scratch);
  // Gradients of the share's parameters: offsets into the TP slice's, or (the conv under CP)
  // buffers added back below. Frozen parameters get throw-away buffers.
  auto grad_or_scratch = [&](Param* p, int64_t offset, int64_t n) {
    if (p->grad) return p->grad + offset;
    float* g = scratch.alloc_f32(n);
    std::memset(g, 0, sizeof(float) * static_cast<size_t>(n));
    return g;
  };
  // out_proj and the gated norm: dv, then dy and dz (into dzxbcdt's first di columns).
  const float* dfull = tp_.leave_backward(dout, N, D_, scratch);
  float* dv_rows = scratch.alloc_f32(N * di_);
  out_proj_.backward(dv_rows, dfull, compute_->operand(dfull, N, D_, scratch), s.v_op, s.out_lora, N, false, scratch);
  const float* dv = to_share(dv_rows, {di_}, B, N, scratch);
  float* dzxbcdt = scratch.alloc_f32(R * q.W);
  float* dy = scratch.alloc_f32(R * q.di);
  cpu::gated_rmsnorm_backward(dy, dzxbcdt, norm_->grad ? norm_->grad + c * q.di : nullptr, dv, s.y.f32(), zxbcdt,
                              w.norm, s.rstd.f32(), R, q.di, q.G, q.W, q.W);
  // The scan, as in forward: dx, dB, dC -> dxbc [rows, Ch]; dΔ; dA, dD.
  float* dxbc = scratch.alloc_f32(R * q.Ch);
  float* ddelta = scratch.alloc_f32(R * q.H);
  float* dA = scratch.alloc_f32(q.H);
  std::memset(dA, 0, sizeof(float) * static_cast<size_t>(q.H));
  float* dD = grad_or_scratch(d_, c * q.H, q.H);
  const float* A = negative_a(w.a_log, scratch);
  float* ds = scratch.alloc_f32(R * q.di);  // the scan's contiguous outputs, before interleaving
  float* dbc = scratch.alloc_f32(2 * R * q.gn);
  for_each_scan(s, [&](int64_t r0, const cpu::ScanSizes& sz, int64_t chunk_at) {
    ProfileScope scope(&scan_time, kProfileScan, true);
    const float* xbc = s.xbc.f32() + r0 * q.Ch;
    cpu::ssd_scan_backward<float>(ds + r0 * q.di, ddelta + r0 * q.H, dbc + r0 * q.gn, dbc + (R + r0) * q.gn, dA, dD,
                                  nullptr, dy + r0 * q.di, nullptr, xbc, s.delta.f32() + r0 * q.H, A, xbc + q.di,
                                  xbc + q.di + q.gn, w.d, s.states.f32() + chunk_at * q.H * P_ * Ns_, sz, strides());
  });
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    float* row = dxbc + r * q.Ch;
    std::memcpy(row, ds + r * q.di, sizeof(float) * static_cast<size_t>(q.di));
    std::memcpy(row + q.di, dbc + r * q.gn, sizeof(float) * static_cast<size_t>(q.gn));
    std::memcpy(row + q.di + q.gn, dbc + (R + r) * q.gn, sizeof(float) * static_cast<size_t>(q.gn));
  }
  // dA_log = dA · dA/dA_log = dA · A.
  if (a_log_->grad)
    for (int64_t h = 0; h < q.H; ++h) a_log_->grad[c * q.H + h] += dA[h] * A[h];
  cpu::dt_softplus_backward(dzxbcdt + 2 * q.di + 2 * q.gn, dt_bias_->grad ? dt_bias_->grad + c * q.H : nullptr, ddelta,
                            zxbcdt + 2 * q.di + 2 * q.gn, w.dt_bias, R, q.H, q.W, q.W, dt_lo_, dt_hi_);
  // The conv + SiLU, into dzxbcdt's x | B | C columns; under CP its share's weight gradients
  // are added back to the rows of the x, B, C parameters they came from.
  const bool split = q.parts > 1 && conv_w_[0]->grad;
  float* dconv_w = split ? scratch.alloc_f32(q.Ch * K_) : conv_w_[0]->grad;
  float* dconv_b = split ? scratch.alloc_f32(q.Ch) : conv_b_[0]->grad;
  if (split) {
    std::memset(dconv_w, 0, sizeof(float) * static_cast<size_t>(q.Ch * K_));
    std::memset(dconv_b, 0, sizeof(float) * static_cast<size_t>(q.Ch));
  }
  for_each_scan(s, [&](int64_t r0, const cpu::ScanSizes& sz, int64_t) {
    ProfileScope scope(&scan_time, kProfileScan, true);
    cpu::causal_conv1d_silu_backward(dzxbcdt + r0 * q.W + q.di, dconv_w, dconv_b, dxbc + r0 * q.Ch,
                                     s.conv_u.f32() + r0 * q.Ch, zxbcdt + r0 * q.W + q.di, w.conv_w, sz.batch, sz.len,
                                     q.Ch, K_, q.W, q.W);
  });
  if (split) {
    int64_t row = 0;
    for (size_t k = 0; k < 3; ++k) {
      const int64_t rows = k == 0 ? q.di : q.gn;
      float* gw = conv_w_[k]->grad + c * rows * K_;
      float* gb = conv_b_[k]->grad + c * rows;
      for (int64_t i = 0; i < rows * K_; ++i) gw[i] += dconv_w[row * K_ + i];
      for (int64_t i = 0; i < rows; ++i) gb[i] += dconv_b[row + i];
      row += rows;
    }
  }
  // Back to this rank's rows, in_proj, then entering the TP region.
  const float* dzx_rows = from_share(dzxbcdt, in_proj_segments(), B, N, scratch);
  float* dfull_in = scratch.alloc_f32(N * D_);
  in_proj_.backward(dfull_in, dzx_rows, compute_->operand(dzx_rows, N, W_, scratch), s.x_op, s.in_lora, N, false,
                    scratch);
  tp_.enter_backward(dx, dfull_in, N, D_, false, scratch);
  if (profile_ && profile_->on) {
    profile_->backward[kProfileScan] += scan_time.backward[kProfileScan];
    profile_->backward[kProfileMamba] -= scan_time.backward[kProfileScan];
  }
}

void MambaMixer::add_importance(const Saved& s, const std::string& name, ImportanceStats& st) const {
  const ImportanceRows rows{s.B, s.S, s.S, 0, s.B * s.S, {}};  // whole sequences: nothing to complete
  const int64_t head0 = tp_.rank() * H_ + sh_.part * sh_.H;
  st.add(name, head0 * P_, sh_.di, s.zxbcdt, sh_.di, sh_.W, rows, true);
}

MambaMixer::State MambaMixer::new_state(int64_t B) const {
  FF_CHECK(cp_ == nullptr, "the inference path runs without context parallelism (parallel.cp = 1)");
  State st;
  st.B = B;
  st.conv.assign(static_cast<size_t>(B * Ch_ * (K_ - 1)), 0.0f);
  st.ssm.assign(static_cast<size_t>(B * H_ * P_ * Ns_), 0.0f);
  return st;
}

void MambaMixer::decode(State& st, float* out, const float* x, int64_t B, int64_t T, int64_t start,
                        Arena& scratch) const {
  FF_CHECK(B == st.B, "a Mamba2 state of %lld sequences cannot decode %lld", (long long)st.B, (long long)B);
  const int64_t N = B * T;
  const ShareWeights w = share_weights(scratch);  // without CP: the TP slice's own
  const Tensor x_op = compute_->operand(tp_.enter(x, N, D_, scratch), N, D_, scratch);
  float* zxbcdt = scratch.alloc_f32(N * W_);
  in_proj_.forward(zxbcdt, x_op, N, nullptr, scratch);
  float* delta = scratch.alloc_f32(N * H_);
  cpu::dt_softplus_forward(delta, zxbcdt + 2 * di_ + 2 * G_ * Ns_, w.dt_bias, N, H_, W_, dt_lo_, dt_hi_);
  const float* A = negative_a(w.a_log, scratch);
  float* xbc = scratch.alloc_f32(N * Ch_);
  float* y = scratch.alloc_f32(N * di_);
  if (start == 0) {  // a fresh sequence: the training forward from zero states, keeping the final ones
    cpu::causal_conv1d_silu_forward(xbc, nullptr, zxbcdt + di_, w.conv_w, w.conv_b, B, T, Ch_, K_, W_);
    cpu::causal_conv1d_final_state(st.conv.data(), zxbcdt + di_, B, T, Ch_, K_, W_);
    const cpu::ScanSizes sz = sizes(B, T);
    float* states = scratch.alloc_f32(B * sz.chunks() * H_ * P_ * Ns_);
    cpu::ssd_scan_forward<float>(y, states, st.ssm.data(), xbc, delta, A, xbc + di_, xbc + di_ + G_ * Ns_, w.d,
                                 nullptr, sz, strides());
  } else {  // one position after another: the conv step and the recurrence (step t's rows: b T + t)
    float* xbc_t = scratch.alloc_f32(B * Ch_);
    float* delta_t = scratch.alloc_f32(B * H_);
    float* y_t = scratch.alloc_f32(B * di_);
    for (int64_t t = 0; t < T; ++t) {
      cpu::causal_conv1d_silu_step(xbc_t, st.conv.data(), zxbcdt + t * W_ + di_, w.conv_w, w.conv_b, B, Ch_, K_,
                                   T * W_);
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(delta_t + b * H_, delta + (b * T + t) * H_, sizeof(float) * static_cast<size_t>(H_));
      cpu::ssd_scan_sequential<float>(y_t, st.ssm.data(), xbc_t, delta_t, A, xbc_t + di_, xbc_t + di_ + G_ * Ns_, w.d,
                                      sizes(B, 1), strides());
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(y + (b * T + t) * di_, y_t + b * di_, sizeof(float) * static_cast<size_t>(di_));
    }
  }
  output(out, y, zxbcdt, w, B, N, nullptr, scratch);
}

}  // namespace ff
