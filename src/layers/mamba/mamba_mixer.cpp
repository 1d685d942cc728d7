#include "layers/mamba/mamba_mixer.h"

#include <cmath>
#include <cstring>
#include <functional>

#include "kernels/cpu/causal_conv1d.h"
#include "kernels/cpu/norm.h"

namespace ff {

namespace {

// Adjacent parameters form one matrix only if they sit one after the other in the store (which
// freezing one but not the other breaks).
void check_adjacent(const std::vector<const Param*>& parts) {
  for (size_t k = 1; k < parts.size(); ++k)
    FF_CHECK(parts[k - 1]->value + parts[k - 1]->numel() == parts[k]->value,
             "'%s' and '%s' are one fused tensor: freeze both or neither (train.freeze)", parts[k - 1]->name.c_str(),
             parts[k]->name.c_str());
}

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
                       float init_std, float out_init_std, TensorParallel tp, const LoraOptions& lora)
    : D_(cfg.d_model),
      H_(cfg.mamba_num_heads / tp.size()),
      P_(cfg.mamba_head_dim),
      G_(cfg.mamba_groups / tp.size()),
      Ns_(cfg.mamba_state),
      K_(cfg.mamba_conv_kernel),
      di_(H_ * P_),
      Ch_(di_ + 2 * G_ * Ns_),
      W_(2 * di_ + 2 * G_ * Ns_ + H_),
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
  FF_CHECK(cfg.mamba_groups % tp.size() == 0, "model.mamba_groups = %lld is not divisible by parallel.tp = %d",
           (long long)cfg.mamba_groups, tp.size());
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
  s.heads = H_;
  s.head_dim = P_;
  s.groups = G_;
  s.state = Ns_;
  s.chunk = chunk_;
  return s;
}

const float* MambaMixer::negative_a(Arena& arena) const {
  float* a = arena.alloc_f32(H_);
  for (int64_t h = 0; h < H_; ++h) a[h] = -std::exp(a_log_->value[h]);
  return a;
}

void MambaMixer::forward(Saved& s, float* out, const float* x, const int32_t* positions, int64_t B, int64_t S,
                         Arena& arena) const {
  check_adjacent(conv_w_);
  check_adjacent(conv_b_);
  const int64_t N = B * S;
  s.x_op = compute_->operand(tp_.enter(x, N, D_, arena), N, D_, arena);
  s.zxbcdt = arena.alloc(Shape{N, W_});
  float* zxbcdt = s.zxbcdt.f32();
  in_proj_.forward(zxbcdt, s.x_op, N, &s.in_lora, arena);
  s.conv_u = arena.alloc(Shape{N, Ch_});
  s.xbc = arena.alloc(Shape{N, Ch_});
  s.delta = arena.alloc(Shape{N, H_});
  s.y = arena.alloc(Shape{N, di_});
  s.segments = sequence_starts(positions, B, S);
  s.B = B;
  s.S = S;
  int64_t chunks = 0;
  for_each_scan(s, [&](int64_t, const cpu::ScanSizes& sz, int64_t) { chunks += sz.batch * sz.chunks(); });
  s.states = arena.alloc(Shape{chunks, H_ * P_ * Ns_});
  cpu::dt_softplus_forward(s.delta.f32(), zxbcdt + 2 * di_ + 2 * G_ * Ns_, dt_bias_->value, N, H_, W_, dt_lo_, dt_hi_);
  const float* A = negative_a(arena);
  for_each_scan(s, [&](int64_t r0, const cpu::ScanSizes& sz, int64_t chunk_at) {
    float* xbc = s.xbc.f32() + r0 * Ch_;
    cpu::causal_conv1d_silu_forward(xbc, s.conv_u.f32() + r0 * Ch_, zxbcdt + r0 * W_ + di_, conv_w_[0]->value,
                                    conv_b_[0]->value, sz.batch, sz.len, Ch_, K_, W_);
    cpu::ssd_scan_forward<float>(s.y.f32() + r0 * di_, s.states.f32() + chunk_at * H_ * P_ * Ns_, nullptr, xbc,
                                 s.delta.f32() + r0 * H_, A, xbc + di_, xbc + di_ + G_ * Ns_, d_->value, nullptr, sz,
                                 strides());
  });
  output(out, s.y.f32(), zxbcdt, N, &s, arena);
}

void MambaMixer::output(float* out, const float* y, const float* zxbcdt, int64_t N, Saved* s, Arena& arena) const {
  float* v = arena.alloc_f32(N * di_);
  float* rstd = s ? (s->rstd = arena.alloc(Shape{N, G_})).f32() : arena.alloc_f32(N * G_);
  cpu::gated_rmsnorm_forward(v, rstd, y, zxbcdt, norm_->value, eps_, N, di_, G_, W_);
  const Tensor v_op = compute_->operand(v, N, di_, arena);
  if (s) s->v_op = v_op;
  float* partial = tp_.active() ? arena.alloc_f32(N * D_) : out;  // row-parallel: partial sums
  out_proj_.forward(partial, v_op, N, s ? &s->out_lora : nullptr, arena);
  tp_.leave(out, partial, N, D_);
}

void MambaMixer::backward(float* dx, const float* dout, const Saved& s, int64_t N, Arena& scratch) const {
  const float* zxbcdt = s.zxbcdt.f32();
  // out_proj and the gated norm: dv [N, di], then dy and dz (into dzxbcdt's first di columns).
  const float* dfull = tp_.leave_backward(dout, N, D_, scratch);
  float* dv = scratch.alloc_f32(N * di_);
  out_proj_.backward(dv, dfull, compute_->operand(dfull, N, D_, scratch), s.v_op, s.out_lora, N, false, scratch);
  float* dzxbcdt = scratch.alloc_f32(N * W_);
  float* dy = scratch.alloc_f32(N * di_);
  cpu::gated_rmsnorm_backward(dy, dzxbcdt, norm_->grad, dv, s.y.f32(), zxbcdt, norm_->value, s.rstd.f32(), N, di_, G_,
                              W_, W_);
  // The scan, segment by segment as in forward: dx, dB, dC -> dxbc [N, Ch]; dΔ; dA, dD.
  float* dxbc = scratch.alloc_f32(N * Ch_);
  float* ddelta = scratch.alloc_f32(N * H_);
  float* dA = scratch.alloc_f32(H_);
  float* dD = d_->grad ? d_->grad : scratch.alloc_f32(H_);
  std::memset(dA, 0, sizeof(float) * static_cast<size_t>(H_));
  const float* A = negative_a(scratch);
  const int64_t gn = G_ * Ns_;
  float* ds = scratch.alloc_f32(N * di_);  // the scan's contiguous outputs, before interleaving
  float* dbc = scratch.alloc_f32(2 * N * gn);
  for_each_scan(s, [&](int64_t r0, const cpu::ScanSizes& sz, int64_t chunk_at) {
    const float* xbc = s.xbc.f32() + r0 * Ch_;
    cpu::ssd_scan_backward<float>(ds + r0 * di_, ddelta + r0 * H_, dbc + r0 * gn, dbc + (N + r0) * gn, dA, dD, nullptr,
                                  dy + r0 * di_, nullptr, xbc, s.delta.f32() + r0 * H_, A, xbc + di_, xbc + di_ + gn,
                                  d_->value, s.states.f32() + chunk_at * H_ * P_ * Ns_, sz, strides());
  });
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; ++r) {
    float* row = dxbc + r * Ch_;
    std::memcpy(row, ds + r * di_, sizeof(float) * static_cast<size_t>(di_));
    std::memcpy(row + di_, dbc + r * gn, sizeof(float) * static_cast<size_t>(gn));
    std::memcpy(row + di_ + gn, dbc + (N + r) * gn, sizeof(float) * static_cast<size_t>(gn));
  }
  // dA_log = dA · dA/dA_log = dA · A.
  if (a_log_->grad)
    for (int64_t h = 0; h < H_; ++h) a_log_->grad[h] += dA[h] * A[h];
  cpu::dt_softplus_backward(dzxbcdt + 2 * di_ + 2 * gn, dt_bias_->grad, ddelta, zxbcdt + 2 * di_ + 2 * gn,
                            dt_bias_->value, N, H_, W_, W_, dt_lo_, dt_hi_);
  // The conv + SiLU, into dzxbcdt's x | B | C columns.
  for_each_scan(s, [&](int64_t r0, const cpu::ScanSizes& sz, int64_t) {
    cpu::causal_conv1d_silu_backward(dzxbcdt + r0 * W_ + di_, conv_w_[0]->grad, conv_b_[0]->grad, dxbc + r0 * Ch_,
                                     s.conv_u.f32() + r0 * Ch_, zxbcdt + r0 * W_ + di_, conv_w_[0]->value, sz.batch,
                                     sz.len, Ch_, K_, W_, W_);
  });
  // in_proj, then entering the TP region.
  float* dfull_in = scratch.alloc_f32(N * D_);
  in_proj_.backward(dfull_in, dzxbcdt, compute_->operand(dzxbcdt, N, W_, scratch), s.x_op, s.in_lora, N, false,
                    scratch);
  tp_.enter_backward(dx, dfull_in, N, D_, false, scratch);
}

MambaMixer::State MambaMixer::new_state(int64_t B) const {
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
  const Tensor x_op = compute_->operand(tp_.enter(x, N, D_, scratch), N, D_, scratch);
  float* zxbcdt = scratch.alloc_f32(N * W_);
  in_proj_.forward(zxbcdt, x_op, N, nullptr, scratch);
  float* delta = scratch.alloc_f32(N * H_);
  cpu::dt_softplus_forward(delta, zxbcdt + 2 * di_ + 2 * G_ * Ns_, dt_bias_->value, N, H_, W_, dt_lo_, dt_hi_);
  const float* A = negative_a(scratch);
  float* xbc = scratch.alloc_f32(N * Ch_);
  float* y = scratch.alloc_f32(N * di_);
  if (start == 0) {  // a fresh sequence: the training forward from zero states, keeping the final ones
    cpu::causal_conv1d_silu_forward(xbc, nullptr, zxbcdt + di_, conv_w_[0]->value, conv_b_[0]->value, B, T, Ch_, K_, W_);
    cpu::causal_conv1d_final_state(st.conv.data(), zxbcdt + di_, B, T, Ch_, K_, W_);
    const cpu::ScanSizes sz = sizes(B, T);
    float* states = scratch.alloc_f32(B * sz.chunks() * H_ * P_ * Ns_);
    cpu::ssd_scan_forward<float>(y, states, st.ssm.data(), xbc, delta, A, xbc + di_, xbc + di_ + G_ * Ns_, d_->value,
                                 nullptr, sz, strides());
  } else {  // one position after another: the conv step and the recurrence, the rows of step t b T + t
    float* xbc_t = scratch.alloc_f32(B * Ch_);
    float* delta_t = scratch.alloc_f32(B * H_);
    float* y_t = scratch.alloc_f32(B * di_);
    for (int64_t t = 0; t < T; ++t) {
      cpu::causal_conv1d_silu_step(xbc_t, st.conv.data(), zxbcdt + t * W_ + di_, conv_w_[0]->value, conv_b_[0]->value,
                                   B, Ch_, K_, T * W_);
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(delta_t + b * H_, delta + (b * T + t) * H_, sizeof(float) * static_cast<size_t>(H_));
      cpu::ssd_scan_sequential<float>(y_t, st.ssm.data(), xbc_t, delta_t, A, xbc_t + di_, xbc_t + di_ + G_ * Ns_,
                                      d_->value, sizes(B, 1), strides());
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(y + (b * T + t) * di_, y_t + b * di_, sizeof(float) * static_cast<size_t>(di_));
    }
  }
  output(out, y, zxbcdt, N, nullptr, scratch);
}

}  // namespace ff
