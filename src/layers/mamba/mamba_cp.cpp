#include "layers/mamba/mamba_cp.h"

#include <cstring>

#include "layers/context_parallel.h"

namespace ff {

namespace {

// Copies between a row of all segments (width sum) and part c of each segment (width sum / P).
// to_part: full -> part; else part -> full.
void copy_part(float* part, float* full, const std::vector<int64_t>& segments, int64_t c, int64_t P, bool to_part) {
  int64_t at_full = 0, at_part = 0;
  for (int64_t seg : segments) {
    const int64_t w = seg / P;
    float* f = full + at_full + c * w;
    float* p = part + at_part;
    if (to_part) std::memcpy(p, f, sizeof(float) * static_cast<size_t>(w));
    else std::memcpy(f, p, sizeof(float) * static_cast<size_t>(w));
    at_full += seg;
    at_part += w;
  }
}

int64_t total(const std::vector<int64_t>& segments) {
  int64_t n = 0;
  for (int64_t s : segments) n += s;
  return n;
}

}  // namespace

void cp_rows_to_channels(float* out, const float* in, const std::vector<int64_t>& segments, int64_t B, int64_t L,
                         const Communicator& cp, Arena& scratch) {
  const int P = cp.size();
  const int64_t width = total(segments), w = width / P, rows = B * L, S = L * P;
  // send [P][rows][w]: to rank c, part c of each of this rank's rows.
  float* send = scratch.alloc_f32(P * rows * w);
  float* recv = scratch.alloc_f32(P * rows * w);
  for (int c = 0; c < P; ++c)
    for (int64_t r = 0; r < rows; ++r)
      copy_part(send + (c * rows + r) * w, const_cast<float*>(in) + r * width, segments, c, P, true);
  const std::vector<int64_t> counts(static_cast<size_t>(P), rows);
  cp.all_to_all_v(recv, counts, send, counts, w);
  // From rank q: its rows, row b L + i at position cp_position(i, L, q, P) of sequence b.
  for (int q = 0; q < P; ++q)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < L; ++i)
        std::memcpy(out + (b * S + cp_position(i, L, q, P)) * w, recv + (q * rows + b * L + i) * w,
                    sizeof(float) * static_cast<size_t>(w));
}

void cp_channels_to_rows(float* out, const float* in, const std::vector<int64_t>& segments, int64_t B, int64_t L,
                         const Communicator& cp, Arena& scratch) {
  const int P = cp.size();
  const int64_t width = total(segments), w = width / P, rows = B * L, S = L * P;
  float* send = scratch.alloc_f32(P * rows * w);
  float* recv = scratch.alloc_f32(P * rows * w);
  // To rank q: the positions its rows hold, in its row order.
  for (int q = 0; q < P; ++q)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < L; ++i)
        std::memcpy(send + (q * rows + b * L + i) * w, in + (b * S + cp_position(i, L, q, P)) * w,
                    sizeof(float) * static_cast<size_t>(w));
  const std::vector<int64_t> counts(static_cast<size_t>(P), rows);
  cp.all_to_all_v(recv, counts, send, counts, w);
  for (int c = 0; c < P; ++c)
    for (int64_t r = 0; r < rows; ++r) copy_part(recv + (c * rows + r) * w, out + r * width, segments, c, P, false);
}

}  // namespace ff
