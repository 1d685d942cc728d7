// Writes what the PyTorch parity tests compare against: for a run config (JSON), the model's
// initial weights, one batch of tokens, and the loss and every parameter gradient of one
// forward/backward, all into one safetensors file.
//   fivefold_parity_dump CONFIG.json OUT.safetensors BATCH
#include <cstdio>
#include <fstream>
#include <sstream>

#include "io/safetensors.h"
#include "models/decoder_lm.h"
#include "train/objective.h"
#include "train/config.h"

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
    std::vector<float> tokens_f(tokens.begin(), tokens.end()), targets_f(targets.begin(), targets.end());
    out.push_back({"tokens", {B, S}, tokens_f.data()});
    out.push_back({"targets", {B, S}, targets_f.data()});

    auto mb = model.new_micro_batch();
    model.params().zero_grads();
    ForwardResult r = forward_mean_ce(model, *mb, tokens.data(), targets.data(), B, S);
    backward_mean_ce(model, *mb, 1.0f);
    std::vector<float> losses = {static_cast<float>(r.loss), static_cast<float>(r.aux_loss + r.z_loss)};
    out.push_back({"loss", {2}, losses.data()});
    for (const Param& p : model.params().params()) out.push_back({"grad/" + p.name, p.global_shape.vec(), p.grad});
    write_safetensors(argv[2], out, {});
  } catch (const std::exception& e) {
    abort_job(e.what());
  }
  return 0;
}
