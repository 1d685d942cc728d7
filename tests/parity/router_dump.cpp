// Writes what tests/parity/test_router_parity.py compares against: the router layer of a run
// config's model (layers/moe/router.h) run over M training micro-batches of B sequences of
// seq_len tokens on one process, as one optimizer step does: per micro-batch its input x, the
// upstream gradient of the gating probs, the chosen experts, the probs, the balancing loss and
// z-loss values and the input gradient; at the end the router weight's accumulated gradient.
//   fivefold_router_dump CONFIG.json OUT.safetensors M B DPROB_SCALE
// DPROB_SCALE multiplies the random upstream gradient of the probs: 0 leaves the losses' gradients
// alone in dx and dW, so that a comparison against them is not swamped by the routing's. Backward scales the losses' gradients by 1 / M, as the pipeline does (loss_scale, §6.6). The
// expert bias (when enabled) is set to a seeded random vector so that it moves the selection.
#include <fstream>
#include <sstream>

#include "core/rng.h"
#include "io/safetensors.h"
#include "layers/moe/router.h"
#include "train/config.h"

int main(int argc, char** argv) {
  using namespace ff;
  MpiSession mpi(&argc, &argv);
  try {
    FF_CHECK(argc == 6, "usage: fivefold_router_dump CONFIG.json OUT.safetensors M B DPROB_SCALE");
    std::ifstream f(argv[1]);
    std::stringstream ss;
    ss << f.rdbuf();
    const RunConfig cfg = run_config_from_json(ss.str(), argv[1]);
    const ModelConfig& mc = cfg.model;
    const int64_t M = std::stoll(argv[3]), B = std::stoll(argv[4]), S = mc.seq_len, N = B * S;
    const int64_t D = mc.d_model, E = mc.num_experts, K = mc.moe_top_k;
    const float dprob_scale = std::stof(argv[5]);
    Communicator world = Communicator::world();
    ParallelGrid grid(world, ParallelConfig{});
    ParamStore store;
    Router router(store, "gate", mc, grid);
    store.allocate(cfg.train.seed);
    Rng rng(cfg.train.seed, "router-parity");
    std::vector<float>& bias = router.expert_bias();
    for (float& b : bias) b = 0.05f * rng.normal();

    std::vector<SafetensorsEntry> out;
    const Param& w = *store.find("gate.weight");
    std::vector<float> weight(w.value, w.value + w.numel());
    out.push_back({"weight", {E, D}, weight.data()});
    if (!bias.empty()) out.push_back({"expert_bias", {E}, bias.data()});
    store.zero_grads();
    std::vector<std::vector<float>> xs(M), dps(M), idx(M), probs(M), dxs(M), losses(M);
    for (int64_t m = 0; m < M; ++m) {
      xs[m].resize(static_cast<size_t>(N * D));
      dps[m].resize(static_cast<size_t>(N * K));
      for (float& v : xs[m]) v = rng.normal();
      for (float& v : dps[m]) v = dprob_scale * rng.normal();
      Arena arena, scratch;
      Router::Saved s;
      router.forward(s, xs[m].data(), N, RouterBatch{B, N, 0, true}, arena);
      dxs[m].assign(static_cast<size_t>(N * D), 0.0f);
      router.backward(dxs[m].data(), dps[m].data(), xs[m].data(), s, N, 1.0f / static_cast<float>(M), scratch);
      idx[m].assign(s.idx(), s.idx() + N * K);
      probs[m].assign(s.topk_probs.f32(), s.topk_probs.f32() + N * K);
      losses[m] = {static_cast<float>(s.aux_loss), static_cast<float>(s.z_loss)};
      const std::string p = "mb" + std::to_string(m) + "/";
      out.push_back({p + "x", {N, D}, xs[m].data()});
      out.push_back({p + "dprobs", {N, K}, dps[m].data()});
      out.push_back({p + "idx", {N, K}, idx[m].data()});
      out.push_back({p + "probs", {N, K}, probs[m].data()});
      out.push_back({p + "losses", {2}, losses[m].data()});
      out.push_back({p + "dx", {N, D}, dxs[m].data()});
    }
    out.push_back({"dweight", {E, D}, w.grad});
    write_safetensors(argv[2], out, {});
  } catch (const std::exception& e) {
    abort_job(e.what());
  }
  return 0;
}
