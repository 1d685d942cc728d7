// The Mamba2 state-space scan (SSD; specs/methods.md §3.2-3.4). Per sequence b and head h, with
// the head's group g(h) = h / (H / G) (contiguous blocks of heads share B and C):
//   S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T      (S [P, N], S_{-1} = the initial state)
//   y_t = S_t C_t + D_h x_t
// Legend: Bs sequences, L positions, H heads of P channels, G groups of state size N, Q chunk.
// Layouts are row-major with a row stride where a tensor is a slice of a wider row (in_proj's
// output holds x | B | C | dt side by side): x [Bs, L, H, P] (row t: H*P values at x + t*ldx),
// dt [Bs, L, H] (Δ after softplus, row stride lddt), B and C [Bs, L, G, N] (row strides ldb, ldc),
// A [H] (negative), D [H], y [Bs, L, H, P] contiguous, states [Bs, H, P, N].
// Templates are instantiated for float (the model) and double (the tests' fp64 checks).
// Activation gradients are OVERWRITTEN; parameter gradients (dA, dD) ACCUMULATE (+=).
#pragma once
#include <cstdint>

namespace ff::cpu {

struct ScanSizes {
  int64_t batch = 1, len = 1, heads = 1, head_dim = 1, groups = 1, state = 1;
  int64_t chunk = 128;  // Q; the last chunk of a sequence may be shorter (L need not divide by Q)
  int64_t chunks() const { return (len + chunk - 1) / chunk; }
};

// Row strides of the inputs (0 = contiguous: H*P for x, H for dt, G*N for B and C).
struct ScanStrides {
  int64_t x = 0, dt = 0, b = 0, c = 0;
};

// Chunked forward (§3.3): intra-chunk quadratic part, chunk states, inter-chunk recurrence.
// chunk_states [Bs, chunks, H, P, N]: the state entering each chunk (H_{c-1}), saved for
// backward. initial_state may be null (zeros); final_state may be null (not wanted).
template <class T>
void ssd_scan_forward(T* y, T* chunk_states, T* final_state, const T* x, const T* dt, const T* A, const T* B,
                      const T* C, const T* D, const T* initial_state, const ScanSizes& s, const ScanStrides& st = {});

// Chunked backward (§3.4) from the saved chunk-entry states, chunks last to first. dy contiguous
// [Bs, L, H, P]; dfinal [Bs, H, P, N] the gradient of the final state (null = 0). Outputs dx, ddt
// (d loss / d Δ), dB, dC (contiguous [Bs, L, G, N]), dinitial (null = not wanted) are overwritten;
// dA [H] and dD [H] accumulate. Deterministic: the same bits for any thread count.
template <class T>
void ssd_scan_backward(T* dx, T* ddt, T* dB, T* dC, T* dA, T* dD, T* dinitial, const T* dy, const T* dfinal,
                       const T* x, const T* dt, const T* A, const T* B, const T* C, const T* D,
                       const T* chunk_states, const ScanSizes& s, const ScanStrides& st = {});

// The plain recurrence, one position after another (the reference in tests, and the decode step
// when L = 1 with state in/out). state [Bs, H, P, N] is read as the initial state and left as
// the final one.
template <class T>
void ssd_scan_sequential(T* y, T* state, const T* x, const T* dt, const T* A, const T* B, const T* C, const T* D,
                         const ScanSizes& s, const ScanStrides& st = {});

// Δ = softplus(dt_raw + dt_bias), clamped to [dt_min, dt_max] when dt_max > 0 (no clamp by
// default: HF's time_step_limit = (0, inf)). dt_raw [rows, H] with row stride ld (0 = H), out
// contiguous [rows, H].
void dt_softplus_forward(float* delta, const float* dt_raw, const float* dt_bias, int64_t rows, int64_t H,
                         int64_t ld, float dt_min, float dt_max);
// d dt_raw (OVERWRITTEN, row stride ld_out, 0 = H) and d dt_bias (+=, null = frozen) from
// d loss / d Δ; zero where the clamp was active.
void dt_softplus_backward(float* ddt_raw, float* ddt_bias, const float* ddelta, const float* dt_raw,
                          const float* dt_bias, int64_t rows, int64_t H, int64_t ld_in, int64_t ld_out, float dt_min,
                          float dt_max);

}  // namespace ff::cpu
