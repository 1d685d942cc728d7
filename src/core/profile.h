// Where a training step's time goes, by component (forward and backward separately), for
// `fivefold bench --profile`. A Profile belongs to a model (no global state); a ProfileScope adds
// the time of its lifetime to one slot when profiling is on and costs one branch when it is off.
#pragma once
#include <array>
#include <chrono>

namespace ff {

enum ProfileSlot : int {
  kProfileEmbedding,
  kProfileNorm,        // pre-norms and residual adds
  kProfileAttention,
  kProfileMlp,
  kProfileMamba,       // Mamba2's projections, dt and gated norm
  kProfileScan,        // Mamba2's conv and SSD scan
  kProfileRouter,
  kProfileDispatch,    // permute, token exchange, combine
  kProfileExperts,
  kProfileSharedExpert,
  kProfileHead,        // final norm, LM head, cross-entropy
  kProfileSlots
};

inline const char* profile_slot_name(int slot) {
  static constexpr const char* kNames[kProfileSlots] = {"embedding", "norms + residual", "attention", "dense MLP", "Mamba2 proj + norm", "Mamba2 conv + scan",
                                                        "MoE router", "MoE dispatch + combine", "MoE experts",
                                                        "MoE shared expert", "final norm + head + loss"};
  return kNames[slot];
}

struct Profile {
  bool on = false;
  std::array<double, kProfileSlots> forward{}, backward{};
  void reset() {
    forward.fill(0);
    backward.fill(0);
  }
};

class ProfileScope {
 public:
  // backward: add to the backward column.
  ProfileScope(Profile* p, int slot, bool backward)
      : p_(p && p->on ? p : nullptr), slot_(slot), backward_(backward) {
    if (p_) t0_ = std::chrono::steady_clock::now();
  }
  ~ProfileScope() {
    if (!p_) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    (backward_ ? p_->backward : p_->forward)[static_cast<size_t>(slot_)] += s;
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  Profile* p_;
  int slot_;
  bool backward_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace ff
