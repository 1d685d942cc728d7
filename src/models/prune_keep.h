// Which channels, heads and layers a pruned model keeps (Minitron; specs/methods.md §3.5-3.6),
// chosen from importance scores, and how one layer of a pruned model is cut from the unpruned
// one (each kind's prune_tensor, models/layer_kind.h). Every keep set is sorted ascending (by
// group first for Mamba heads), so keeping everything is the identity.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "layers/model_config.h"

namespace ff {

// Target sizes of `fivefold prune`; 0 keeps that dimension whole.
struct PruneTargets {
  int64_t d_model = 0, ffn_hidden = 0, num_heads = 0, mamba_num_heads = 0, mamba_head_dim = 0, layers = 0;
  int64_t num_experts = 0, moe_ffn_hidden = 0;  // routed experts per MoE layer, neurons per expert
  bool group_aware = true;  // false: the group-unaware Mamba baseline of the ablation
};

// What one layer keeps: MLP neurons, attention query heads or Mamba2 heads (by group), and Mamba2
// head channels; an MoE layer's routed experts (expert k of the pruned layer is experts[k], its
// neurons hidden[k F', (k + 1) F')).
struct LayerKeep {
  std::vector<int64_t> hidden, channels;
  std::vector<int64_t> experts;
};

// One layer of the pruned model: the unpruned and pruned configs, the layer's name prefix in
// each (layers dropped in depth renumber the rest), the kept embedding channels and its own keep.
struct LayerPrune {
  const ModelConfig& from;
  const ModelConfig& to;
  std::string from_prefix, to_prefix;
  const std::vector<int64_t>& embedding;
  const LayerKeep& keep;
};
// The unpruned model's global tensor by name (false: none).
using TensorSource = std::function<bool(const std::string& name, HostTensor& out)>;

// Slicing of global tensors: rows (dim 0) or the last dim at the given indices, in their order.
HostTensor take_rows(const HostTensor& t, const std::vector<int64_t>& rows);
HostTensor take_cols(const HostTensor& t, const std::vector<int64_t>& cols);
// Each id expanded to its block [id size, (id + 1) size): a head's rows.
std::vector<int64_t> blocks_of(const std::vector<int64_t>& ids, int64_t size);
std::vector<int64_t> all_of(int64_t n);
// The tensor `name` of the source, required to exist.
HostTensor source_tensor(const TensorSource& source, const std::string& name);
// If name is the pruned layer's `to_prefix + suffix`: out = the unpruned `from_prefix + suffix`
// with the rows and then the last-dim columns kept (null: all of them); else false.
bool cut(const LayerPrune& p, const std::string& suffix, const std::string& name, const TensorSource& source,
         const std::vector<int64_t>* rows, const std::vector<int64_t>* cols, HostTensor& out);
// The layer's pre-norm `<prefix>.<norm>.weight` (and .bias): its kept embedding channels.
bool cut_norm(const LayerPrune& p, const std::string& norm, const std::string& name, const TensorSource& source,
              HostTensor& out);

// The k highest-scoring indices of `scores`, ascending; ties go to the lower index.
std::vector<int64_t> top_k_indices(const std::vector<double>& scores, int64_t k);
// scores split into G contiguous groups of equal size: the k / G highest of each group (k a
// multiple of G), group after group, ascending within each.
std::vector<int64_t> top_k_within_groups(const std::vector<double>& scores, int64_t G, int64_t k);

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
