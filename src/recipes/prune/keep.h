// Which channels, heads and layers a pruned model keeps (Minitron; specs/methods.md §3.5-3.6),
// chosen from importance scores. Every keep set is sorted ascending (by group first for Mamba
// heads), so keeping everything is the identity.
#pragma once
#include <cstdint>
#include <vector>

namespace ff {

// The k highest-scoring indices of `scores`, ascending; ties go to the lower index.
std::vector<int64_t> top_k_indices(const std::vector<double>& scores, int64_t k);

// Mamba2 heads and head channels from the x segment's scores [H * P] (head h, channel p at h P + p).
struct MambaKeep {
  std::vector<int64_t> heads;     // H' kept heads; group-aware: H' / G of each group, by group
  std::vector<int64_t> channels;  // P' kept channels, the same in every head
};
// Group-aware (§3.6): r[p] = ||score[:, p]||_2 picks the P' channels; q[h] = ||score[h, kept]||_2
// ranks the heads within each of the G groups, keeping H' / G per group. H' must divide by G.
MambaKeep mamba_keep_group_aware(const std::vector<double>& scores, int64_t H, int64_t P, int64_t G, int64_t H_keep,
                                 int64_t P_keep);
// The baseline of the ablation: the top H' heads over all groups (by q), laid out in index order as
// G contiguous blocks of H' / G, whatever group each came from.
MambaKeep mamba_keep_group_unaware(const std::vector<double>& scores, int64_t H, int64_t P, int64_t G, int64_t H_keep,
                                   int64_t P_keep);

// Attention query heads (§3.5): head score = L2 over its dh channel scores [Hq * dh]; ranked within
// each of the Hkv query groups, keeping Hq' / Hkv per group (K and V are kept whole).
std::vector<int64_t> attention_heads_keep(const std::vector<double>& scores, int64_t Hq, int64_t Hkv, int64_t dh,
                                          int64_t Hq_keep);

}  // namespace ff
