#include "recipes/ppo/ppo_placement.h"

#include "core/check.h"

namespace ff {

void RolloutScores::reset(int64_t R, int64_t S) {
  for (auto* v : {&logp, &ref, &values}) v->assign(static_cast<size_t>(R * S), 0.0f);
  score.assign(static_cast<size_t>(R), 0.0f);
}

namespace {

int64_t dp_of(const ParallelConfig& p, int64_t ranks) { return ranks / (p.tp * p.cp * p.pp); }

// The concatenation of some arrays, and back.
std::vector<float> joined(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<float> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}
void unjoin(const std::vector<float>& all, std::initializer_list<std::vector<float>*> parts) {
  size_t at = 0;
  for (auto* p : parts) {
    std::copy(all.begin() + static_cast<std::ptrdiff_t>(at), all.begin() + static_cast<std::ptrdiff_t>(at + p->size()),
              p->begin());
    at += p->size();
  }
}

void broadcast_floats(const Communicator& c, std::vector<float>& v, int root) {
  c.broadcast(v.data(), static_cast<int64_t>(v.size() * sizeof(float)), root);
}

}  // namespace

PpoPlacement::PpoPlacement(const RunConfig& cfg, const Communicator& world) : world_(world) {
  const int64_t W = world.size(), N = cfg.train.ppo_critic_ranks;
  split_ = N > 0;
  if (!split_) {
    grid_ = std::make_unique<ParallelGrid>(world, cfg.parallel);
    actor_dp_ = critic_dp_ = grid_->dp_size();
    return;
  }
  FF_CHECK(N < W, "train.ppo_critic_ranks = %lld leaves no rank of %lld for the actor", (long long)N, (long long)W);
  const int64_t A = cfg.actor_world(W);
  actor_side_ = world.rank() < A;
  critic_side_ = !actor_side_;
  group_ = world.split(actor_side_ ? 0 : 1, world.rank());
  bridge_ = world.split(world.rank() == 0 || critic_side_ ? 0 : 1, world.rank());
  grid_ = std::make_unique<ParallelGrid>(group_, actor_side_ ? cfg.parallel : cfg.ppo_critic_layout());
  actor_dp_ = dp_of(cfg.parallel, A);
  critic_dp_ = dp_of(cfg.ppo_critic_layout(), N);
}

void PpoPlacement::share_rollouts(std::vector<Generated>& generated, int64_t first, int64_t count) const {
  if (!split_ || !(world_.rank() == 0 || critic_side_)) return;
  // Per sequence: its token count, whether it ended with EOS, its tokens.
  std::vector<int32_t> wire;
  if (world_.rank() == 0)
    for (int64_t i = first; i < first + count; ++i) {
      const Generated& g = generated[static_cast<size_t>(i)];
      wire.push_back(static_cast<int32_t>(g.tokens.size()));
      wire.push_back(g.finish == "eos" ? 1 : 0);
      wire.insert(wire.end(), g.tokens.begin(), g.tokens.end());
    }
  int64_t n = static_cast<int64_t>(wire.size());
  bridge_.broadcast(&n, sizeof(n), 0);
  wire.resize(static_cast<size_t>(n));
  bridge_.broadcast(wire.data(), n * static_cast<int64_t>(sizeof(int32_t)), 0);
  if (world_.rank() == 0) return;
  size_t at = 0;
  for (int64_t i = first; i < first + count; ++i) {
    FF_CHECK(at + 2 <= wire.size(), "PPO: a rollout chunk arrived short (%zu values)", wire.size());
    Generated& g = generated[static_cast<size_t>(i)];
    const size_t len = static_cast<size_t>(wire[at]);
    g.finish = wire[at + 1] ? "eos" : "length";
    g.tokens.assign(wire.begin() + static_cast<std::ptrdiff_t>(at + 2),
                    wire.begin() + static_cast<std::ptrdiff_t>(at + 2 + len));
    at += 2 + len;
  }
}

void PpoPlacement::complete_scores(RolloutScores& s) const {
  if (!split_) {  // every row is filled on one rank of the world, zeros elsewhere: the sum is exact
    std::vector<float> all = joined({&s.logp, &s.ref, &s.values, &s.score});
    world_.all_reduce_sum(all.data(), static_cast<int64_t>(all.size()));
    unjoin(all, {&s.logp, &s.ref, &s.values, &s.score});
    return;
  }
  std::vector<float> actor_rows = joined({&s.logp, &s.ref}), critic_rows = joined({&s.values, &s.score});
  std::vector<float>& mine = actor_side_ ? actor_rows : critic_rows;
  group_.all_reduce_sum(mine.data(), static_cast<int64_t>(mine.size()));
  if (world_.rank() == 0 || critic_side_) {
    broadcast_floats(bridge_, actor_rows, 0);   // the actor's first rank to the critic's ranks
    broadcast_floats(bridge_, critic_rows, 1);  // the critic's first rank to the actor's first
  }
  if (actor_side_) broadcast_floats(group_, critic_rows, 0);
  unjoin(actor_rows, {&s.logp, &s.ref});
  unjoin(critic_rows, {&s.values, &s.score});
}

}  // namespace ff
