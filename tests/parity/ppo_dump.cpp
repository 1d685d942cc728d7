// Writes what test_ppo_parity.py compares against: one whole PPO step of fivefold's on fixed
// rollouts (recipes/ppo), from the scores to both losses and all gradients.
//   fivefold_ppo_dump CONFIG.json OUT.safetensors
// Six models of the config's architecture: the rollout-time actor (seed) and critic (seed + 2, a
// value head), the reference (seed + 1), the reward model (seed + 3, a value head), and the actor
// and critic being trained (seeds 4 and 5: other weights, so that ratios and value moves leave the
// clip ranges on both sides). Four sequences of model.seq_len tokens; sequence b has a prompt of
// 2 + b % 3 tokens, its response runs to the end or one token short of it, and all but sequence 1
// ended. The step: old log-probs, reference log-probs, values and scores; KL-penalised rewards,
// GAE, whitening; the actor's and the critic's clipped losses and their gradients.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "io/safetensors.h"
#include "models/decoder_lm.h"
#include "recipes/ppo/advantages.h"
#include "recipes/ppo/ppo_objective.h"
#include "train/config.h"

namespace {
using namespace ff;

// The head's value per row ([B * S]; 0 where no target) of one forward.
std::vector<float> row_values(DecoderLM& m, const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                              int64_t B, int64_t S) {
  auto mb = m.new_micro_batch();
  m.forward(*mb, tokens.data(), targets.data(), B, S);
  const HeadRows rows = m.head_rows(*mb);
  std::vector<float> out(static_cast<size_t>(B * S), 0.0f);
  for (int64_t n = 0; n < B * S; ++n)
    if (targets[static_cast<size_t>(n)] >= 0) out[static_cast<size_t>(n)] = rows.value[n];
  return out;
}

// One objective's loss on one micro-batch, its gradients accumulated into the model.
double loss_and_gradients(DecoderLM& m, const TokenObjective& objective, const std::vector<int32_t>& tokens,
                          const std::vector<int32_t>& targets, int64_t B, int64_t S) {
  auto mb = m.new_micro_batch();
  m.forward(*mb, tokens.data(), targets.data(), B, S);
  std::vector<float> d(static_cast<size_t>(B * S));
  HeadRows rows = m.head_rows(*mb);
  const double loss = objective.evaluate(rows, d.data()).loss;
  m.backward(*mb, HeadGradient(d.data()), 1.0f, 1.0f);
  return loss;
}
// The actor's loss (a distribution objective) on one micro-batch, its gradients accumulated.
double actor_loss_and_gradients(DecoderLM& m, const LogitObjective& objective, const std::vector<int32_t>& tokens,
                                const std::vector<int32_t>& targets, int64_t B, int64_t S) {
  auto mb = m.new_micro_batch();
  m.forward(*mb, tokens.data(), targets.data(), B, S);
  StudentLogits in;
  in.logits = m.head_logits(*mb);
  in.lse = m.head_lse(*mb);
  in.rows = m.head_rows(*mb);
  in.tokens = tokens.data();
  in.S_full = S;
  in.Vl = m.vocab_shard();
  std::vector<float> d(static_cast<size_t>(B * S * in.Vl));
  const double loss = objective.evaluate(in, d.data(), nullptr).loss;
  m.backward(*mb, HeadGradient::of_logits(d.data()), 1.0f, 1.0f);
  return loss;
}
}  // namespace

int main(int argc, char** argv) {
  using namespace ff;
  MpiSession mpi(&argc, &argv);
  try {
    FF_CHECK(argc == 3, "usage: fivefold_ppo_dump CONFIG.json OUT.safetensors");
    std::ifstream f(argv[1]);
    std::stringstream ss;
    ss << f.rdbuf();
    const RunConfig cfg = run_config_from_json(ss.str(), argv[1]);
    const auto& tc = cfg.train;
    const int64_t B = 4, S = cfg.model.seq_len, V = cfg.model.vocab_size;
    Communicator self = Communicator::self();
    ParallelGrid one(self, ParallelConfig{});
    ModelConfig lm = cfg.model, value = cfg.model;
    lm.head = HeadKind::lm;
    lm.head_chunk_rows = 0;
    value.head = HeadKind::value;
    value.value_outputs = 1;
    const uint64_t s = tc.seed;
    DecoderLM old_actor(lm, one, s), reference(lm, one, s + 1), old_critic(value, one, s + 2), reward(value, one, s + 3),
        actor(lm, one, s + 4), critic(value, one, s + 5);
    std::vector<SafetensorsEntry> out;
    std::vector<std::vector<float>> keep;  // values that must outlive the write
    for (auto [prefix, m] : {std::pair<const char*, DecoderLM*>{"old_actor/", &old_actor}, {"reference/", &reference},
                             {"old_critic/", &old_critic}, {"reward/", &reward}, {"actor/", &actor}, {"critic/", &critic}})
      for (const Param& p : m->params().params()) out.push_back({prefix + p.name, p.global_shape.vec(), p.value});

    // The rollouts.
    Rng rng(s, "ppo-parity");
    std::vector<int32_t> tokens(static_cast<size_t>(B * S), 0), targets(tokens.size(), -1);
    std::vector<ResponseSpan> spans;
    std::vector<float> ended;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t P = 2 + b % 3, L = S - b % 2;
      for (int64_t t = 0; t < L; ++t) tokens[static_cast<size_t>(b * S + t)] = static_cast<int32_t>(rng.below(V));
      for (int64_t t = P - 1; t < L - 1; ++t) targets[static_cast<size_t>(b * S + t)] = tokens[static_cast<size_t>(b * S + t + 1)];
      spans.push_back({P - 1, L - 1});
      ended.push_back(b == 1 ? 0.0f : 1.0f);
    }
    // Scores, rewards, GAE, whitening.
    const auto logp = row_values(old_actor, tokens, targets, B, S), ref = row_values(reference, tokens, targets, B, S),
               values = row_values(old_critic, tokens, targets, B, S), rm = row_values(reward, tokens, targets, B, S);
    std::vector<std::vector<float>> adv(1, std::vector<float>(tokens.size())), mask(1, adv[0]);
    std::vector<float> ret(tokens.size()), rewards(static_cast<size_t>(S)), actor_mask(tokens.size(), 0.0f);
    for (int64_t b = 0; b < B; ++b) {
      const ResponseSpan sp = spans[static_cast<size_t>(b)];
      const int64_t o = b * S;
      kl_penalized_rewards(rewards.data(), logp.data() + o, ref.data() + o, sp, S, rm[static_cast<size_t>(o + sp.end - 1)],
                           tc.ppo_kl_beta, tc.ppo_absolute_kl);
      generalized_advantages(adv[0].data() + o, ret.data() + o, rewards.data(), values.data() + o, sp, S, tc.ppo_gamma,
                             tc.ppo_lambda);
      for (int64_t t = sp.first; t < sp.end; ++t) {
        mask[0][static_cast<size_t>(o + t)] = 1.0f;
        actor_mask[static_cast<size_t>(o + t)] = ended[static_cast<size_t>(b)];
      }
    }
    whiten_advantages(adv, mask, self);
    double actor_rows = 0, critic_rows = 0;
    for (size_t i = 0; i < tokens.size(); ++i) actor_rows += actor_mask[i], critic_rows += mask[0][i];
    // The losses.
    const std::vector<PpoRows> a_rows{{logp, adv[0], actor_mask}}, c_rows{{values, ret, mask[0]}};
    actor.params().zero_grads();
    critic.params().zero_grads();
    std::vector<float> losses = {
        static_cast<float>(actor_loss_and_gradients(actor, PpoActorLoss(a_rows, actor_rows, tc.ppo_clip, tc.ppo_entropy_coeff),
                                                      tokens, targets, B, S)),
        static_cast<float>(loss_and_gradients(critic, PpoCriticLoss(c_rows, critic_rows, tc.ppo_value_clip), tokens,
                                              targets, B, S))};
    keep.push_back(std::vector<float>(tokens.begin(), tokens.end()));
    keep.push_back(std::vector<float>(targets.begin(), targets.end()));
    out.push_back({"tokens", {B, S}, keep[0].data()});
    out.push_back({"targets", {B, S}, keep[1].data()});
    out.push_back({"ended", {B}, ended.data()});
    out.push_back({"advantages", {B, S}, adv[0].data()});
    out.push_back({"returns", {B, S}, ret.data()});
    out.push_back({"losses", {2}, losses.data()});
    for (const Param& p : actor.params().params()) out.push_back({"actor_grad/" + p.name, p.global_shape.vec(), p.grad});
    for (const Param& p : critic.params().params()) out.push_back({"critic_grad/" + p.name, p.global_shape.vec(), p.grad});
    write_safetensors(argv[2], out, {});
  } catch (const std::exception& e) {
    abort_job(e.what());
  }
  return 0;
}
