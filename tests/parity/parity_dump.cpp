// Writes what the PyTorch parity tests compare against: for a run config (JSON), the model's
// initial weights, one batch of tokens, and the loss and every parameter gradient of one
// forward/backward, all into one safetensors file.
//   fivefold_parity_dump CONFIG.json OUT.safetensors BATCH
// The objective is the config's train.objective: the mean cross-entropy, or a pairwise objective
// on BATCH / 2 pairs (sequences 2i, 2i + 1), where each sequence's first third is its prompt
// (no targets), the DPO family's reference is the same architecture from seed + 1 (its weights
// written as ref/...), and each sequence has a ground-truth reward (RPO).
#include <cstdio>
#include <fstream>
#include <sstream>

#include "io/safetensors.h"
#include "models/decoder_lm.h"
#include "train/config.h"
#include "train/objective.h"
#include "train/preference_objective.h"

namespace {
using namespace ff;

// The pairwise objective's loss of one micro-batch, its gradients accumulated into the model.
double pairwise_loss(const RunConfig& cfg, const ParallelGrid& grid, DecoderLM& model,
                     const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                     const std::vector<float>& rewards, int64_t B, std::vector<SafetensorsEntry>& out,
                     std::vector<float>& ref_values) {
  const int64_t S = cfg.model.seq_len;
  const PairwiseOptions o = PairwiseOptions::of(cfg.train);
  std::vector<std::vector<double>> reference(1);
  if (o.kind != Objective::bradley_terry) {
    DecoderLM ref(cfg.model, grid, cfg.train.seed + 1);
    ref_values.assign(ref.params().values(), ref.params().values() + ref.params().numel());
    for (const Param& p : ref.params().params()) out.push_back({"ref/" + p.name, p.global_shape.vec(), ref_values.data() + p.offset});
    auto rmb = ref.new_micro_batch();
    ref.forward(*rmb, tokens.data(), targets.data(), B, S);
    reference[0] = sequence_logps(ref.head_rows(*rmb), o.average_log_probs);
  }
  const std::vector<std::vector<float>> r{rewards};
  const PairwiseObjective objective(o, static_cast<double>(B / 2), &reference, &r);
  auto mb = model.new_micro_batch();
  ForwardResult fr = model.forward(*mb, tokens.data(), targets.data(), B, S);
  std::vector<float> dlogp(static_cast<size_t>(B * S));
  const double loss = objective.evaluate(model.head_rows(*mb), dlogp.data()).loss;
  model.backward(*mb, HeadGradient(dlogp.data()), 1.0f, 1.0f);
  return loss + fr.aux_loss + fr.z_loss;
}
}  // namespace

int main(int argc, char** argv) {
  using namespace ff;
  MpiSession mpi(&argc, &argv);
  try {
    FF_CHECK(argc == 4, "usage: fivefold_parity_dump CONFIG.json OUT.safetensors BATCH");
    std::ifstream f(argv[1]);
    std::stringstream ss;
    ss << f.rdbuf();
    RunConfig cfg = run_config_from_json(ss.str(), argv[1]);
    const int64_t B = std::stoll(argv[3]), S = cfg.model.seq_len, V = cfg.model.vocab_size;
    const bool pairwise = cfg.train.objective != Objective::cross_entropy;
    Communicator world = Communicator::world();
    ParallelGrid grid(world, cfg.parallel);
    DecoderLM model(cfg.model, grid, cfg.train.seed);
    std::vector<SafetensorsEntry> out;
    std::vector<float> initial(model.params().values(), model.params().values() + model.params().numel());
    for (const Param& p : model.params().params())
      out.push_back({"param/" + p.name, p.global_shape.vec(), initial.data() + p.offset});

    Rng rng(cfg.train.seed, "parity-batch");
    std::vector<int32_t> tokens(static_cast<size_t>(B * S)), targets(tokens.size());
    for (auto& t : tokens) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
    for (auto& t : targets) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
    targets[0] = -1;  // one ignored position
    std::vector<float> rewards(static_cast<size_t>(B));
    if (pairwise)
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t s = 0; s < S / 3; ++s) targets[static_cast<size_t>(b * S + s)] = -1;  // the prompt
        rewards[static_cast<size_t>(b)] = static_cast<float>(rng.below(9));
      }
    std::vector<float> tokens_f(tokens.begin(), tokens.end()), targets_f(targets.begin(), targets.end());
    out.push_back({"tokens", {B, S}, tokens_f.data()});
    out.push_back({"targets", {B, S}, targets_f.data()});
    out.push_back({"rewards", {B}, rewards.data()});

    model.params().zero_grads();
    std::vector<float> losses(2), ref_values;
    if (pairwise) {
      losses[0] = static_cast<float>(pairwise_loss(cfg, grid, model, tokens, targets, rewards, B, out, ref_values));
    } else {
      auto mb = model.new_micro_batch();
      ForwardResult r = forward_mean_ce(model, *mb, tokens.data(), targets.data(), B, S);
      backward_mean_ce(model, *mb, 1.0f);
      losses = {static_cast<float>(r.loss), static_cast<float>(r.aux_loss + r.z_loss)};
    }
    out.push_back({"loss", {2}, losses.data()});
    for (const Param& p : model.params().params()) out.push_back({"grad/" + p.name, p.global_shape.vec(), p.grad});
    write_safetensors(argv[2], out, {});
  } catch (const std::exception& e) {
    abort_job(e.what());
  }
  return 0;
}
