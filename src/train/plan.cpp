#include "train/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>

#include "models/decoder_lm.h"
#include "models/layer_kind.h"
#include "train/flops.h"
#include "train/pipeline.h"

namespace ff {

namespace {

constexpr double kFloat = 4.0;  // bytes

double norm_params(const ModelConfig& c) {
  return static_cast<double>(c.norm == NormKind::layernorm1p ? 2 * c.d_model : c.d_model);
}

// Bytes one micro-batch saves for backward in pattern layer j on one rank: the layer's output
// stream, its norm's output and statistics, and the mixer's own (models/layer_kind.h). fp32
// buffers count 4 bytes a value; GEMM operands kept for the weight gradients count 2 more under
// bf16 (bf16 copies beside the fp32 values) and none under fp32 (views).
double layer_activations(const ModelConfig& c, const LayerKindInfo& kind, const ParallelConfig& p, int64_t B) {
  const double D = static_cast<double>(c.d_model), N = static_cast<double>(B * c.seq_len / p.cp);
  const double Ns = p.sequence_parallel ? N / static_cast<double>(p.tp) : N;
  return (2 * Ns * D + 2 * Ns) * kFloat + kind.activation_bytes(c, p, B);
}

}  // namespace

Plan plan_layout(const PlanInput& in, const DeviceSpec& dev) {
  Plan plan;
  const ModelConfig& c = in.model;
  const ParallelConfig& p = in.layout;
  plan.problems = p.validate(in.world);
  if (plan.problems.empty()) plan.problems = layout_problems(c, p);
  if (!plan.problems.empty()) return plan;
  const auto kinds = c.layers();
  const int64_t L = static_cast<int64_t>(kinds.size()), VS = p.pp * p.virtual_stages;
  const double D = static_cast<double>(c.d_model), T = static_cast<double>(p.tp);
  const double dp_cp = static_cast<double>(in.world / (p.tp * p.pp));  // DP x CP
  const double edp = static_cast<double>(in.world / (p.expert_tp() * p.ep * p.pp));
  const int64_t M = in.grad_accum, B = in.micro_batch;
  const double N = static_cast<double>(B * c.seq_len / p.cp), Ns = p.sequence_parallel ? N / T : N;

  // The most loaded pipeline stage decides the memory.
  // With LoRA only the adapters train: their gradients and moments, spread over the layers like
  // the layers themselves (an approximation per stage) and over TP (the sliced factor dominates).
  ModelConfig no_adapters = c;
  no_adapters.lora_rank = 0;
  // The routed experts' adapters (lora_targets experts.*) are expert parameters: split over EP
  // and ETP, sharded over expert-DP, counted per layer.
  std::vector<const LayerKindInfo*> layer_kinds;
  double all_expert_adapters = 0;
  const ParallelConfig one_rank;
  for (LayerKind k : kinds) {
    layer_kinds.push_back(&layer_kind(k));
    all_expert_adapters += layer_kinds.back()->rank_parameters(c, one_rank).expert_adapters;
  }
  const double adapters = static_cast<double>(count_parameters(c) - count_parameters(no_adapters)) - all_expert_adapters;
  for (int64_t stage = 0; stage < p.pp; ++stage) {
    double dense = 0, expert = 0, act = 0, stage_layers = 0, expert_adapters = 0;
    for (int64_t chunk = 0; chunk < p.virtual_stages; ++chunk) {
      const int64_t vs = chunk * p.pp + stage;
      for (int64_t j = vs * L / VS; j < (vs + 1) * L / VS; ++j) {
        const LayerKindInfo& kind = *layer_kinds[static_cast<size_t>(j)];
        const RankParameters rp = kind.rank_parameters(c, p);
        dense += norm_params(c) + rp.dense;
        expert += rp.expert;
        expert_adapters += rp.expert_adapters;
        act += layer_activations(c, kind, p, B);
        ++stage_layers;
      }
      if (vs == 0) {
        dense += static_cast<double>(c.vocab_size) * D / T;
        act += Ns * D * kFloat + (p.tp > 1 ? N * D * kFloat : 0);
      }
      if (vs == VS - 1) {
        dense += (c.tie_embeddings ? 0 : static_cast<double>(c.vocab_size) * D / T) + D;
        const double logit_rows = c.head_chunk_rows > 0 ? std::min(N, static_cast<double>(c.head_chunk_rows)) : N;
        act += (logit_rows * static_cast<double>(c.vocab_size) / T + 3 * N + 2 * Ns * D) * kFloat;  // logits, losses, norm
        if (c.precision == Precision::bf16) act += N * D * 2.0;  // the head's input as an operand
      }
    }
    // The activation records the pipeline executor keeps alive on this stage.
    act *= static_cast<double>(micro_batch_records(p.pp, stage, M, p.virtual_stages));
    // Weights: the fp32 masters, plus their bf16 copy under bf16 compute.
    const double weights = (dense + expert) * (c.precision == Precision::bf16 ? kFloat + 2.0 : kFloat);
    const double trained_dense = c.lora_rank > 0 ? adapters * stage_layers / static_cast<double>(L) / T : dense;
    const double trained_expert = c.lora_rank > 0 ? expert_adapters : expert;
    const double opt = in.distributed_optimizer ? 2 * kFloat * (trained_dense / dp_cp + trained_expert / edp)
                                                : 2 * kFloat * (trained_dense + trained_expert);
    const double grads = (trained_dense + trained_expert) * kFloat;
    if (weights + grads + opt + act > plan.total()) {
      plan.weights = weights;
      plan.grads = grads;
      plan.optimizer = opt;
      plan.activations = act;
    }
  }

  // Time: the global batch's model FLOPs spread over the ranks at the measured rate, plus the
  // pipeline bubble, plus the bytes each rank moves in collectives over its link (ring costs) and
  // a fixed latency per collective (each of the n - 1 ring steps of a collective over n ranks).
  const double flops = training_flops(c, M * B * in.world / (p.tp * p.cp * p.pp), c.seq_len) /
                       static_cast<double>(in.world);
  plan.compute_s = flops / (dev.gemm_tflops * 1e12 * dev.efficiency);
  if (p.pp > 1)
    plan.bubble_s = plan.compute_s * static_cast<double>(p.pp - 1) / static_cast<double>(M * p.virtual_stages);
  double bytes = ring_bytes(plan.grads, dp_cp);  // DP gradient reduction (dense; experts over EDP, approximated alike)
  double steps = dp_cp > 1 ? 2 * (dp_cp - 1) : 0;  // latency-bound ring steps
  // Each layer's collectives (TP regions, CP's K/V exchange, EP's dispatch), M micro-batches over
  // the pipeline stages.
  for (const LayerKindInfo* k : layer_kinds) {
    const LayerTraffic t = k->traffic(c, p, B);
    bytes += static_cast<double>(M) * t.bytes / static_cast<double>(p.pp);
    steps += static_cast<double>(M) * t.steps / static_cast<double>(p.pp);
  }
  if (p.pp > 1) {
    bytes += static_cast<double>(M * p.virtual_stages) * 2 * Ns * D * kFloat;
    steps += static_cast<double>(M * p.virtual_stages) * 2;
  }
  plan.communication_s = bytes / (dev.link_gbytes * 1e9) + steps * dev.latency_us * 1e-6;
  return plan;
}

std::vector<std::pair<ParallelConfig, Plan>> plan_all_layouts(const PlanInput& in, const DeviceSpec& dev) {
  std::vector<std::pair<ParallelConfig, Plan>> out;
  const int64_t W = in.world;
  for (int64_t tp = 1; tp <= W; tp *= 2)
    for (int64_t cp = 1; tp * cp <= W; cp *= 2)
      for (int64_t pp = 1; tp * cp * pp <= W; pp *= 2)
        for (int64_t ep = 1; ep <= W; ep *= 2)
          for (int64_t etp : {int64_t(1), tp}) {
            ParallelConfig p = in.layout;
            p.tp = tp;
            p.cp = cp;
            p.pp = pp;
            p.ep = ep;
            p.etp = etp;
            p.sequence_parallel = tp > 1;
            if (in.model.num_experts == 0 && ep > 1) continue;
            PlanInput one = in;
            one.layout = p;
            Plan plan = plan_layout(one, dev);
            if (plan.problems.empty()) out.emplace_back(p, plan);
            if (tp == 1) break;  // etp in {1, tp} is one choice
          }
  const double cap = dev.memory_gib * 1024 * 1024 * 1024;
  std::stable_sort(out.begin(), out.end(), [&](const auto& a, const auto& b) {
    const bool fa = a.second.total() <= cap, fb = b.second.total() <= cap;
    if (fa != fb) return fa;
    return a.second.step_s() < b.second.step_s();
  });
  return out;
}

std::string plan_table(const std::vector<std::pair<ParallelConfig, Plan>>& plans, const DeviceSpec& dev) {
  const double gib = 1024.0 * 1024 * 1024, cap = dev.memory_gib * gib;
  std::string s = strprintf("%-26s %9s %9s %9s %9s %9s %5s %10s %6s\n", "layout (tp cp pp ep etp)", "weights", "grads",
                            "optim", "activ", "total", "fits", "step (s)", "comm");
  for (const auto& [p, plan] : plans)
    s += strprintf("tp%-3lld cp%-3lld pp%-3lld ep%-3lld etp%-3lld %8.2fG %8.2fG %8.2fG %8.2fG %8.2fG %5s %10.3f %5.1f%%\n",
                   (long long)p.tp, (long long)p.cp, (long long)p.pp, (long long)p.ep, (long long)p.expert_tp(),
                   plan.weights / gib, plan.grads / gib, plan.optimizer / gib, plan.activations / gib,
                   plan.total() / gib, plan.total() <= cap ? "yes" : "no", plan.step_s(),
                   100 * plan.communication_share());
  return s;
}

double available_memory_per_rank() {
  std::ifstream f("/proc/meminfo");
  std::string key, unit;
  double kib = 0, value = 0;
  while (f >> key >> value >> unit)
    if (key == "MemAvailable:") kib = value;
  if (kib <= 0) return INFINITY;  // unknown: nothing to check against
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const double ranks = local != nullptr && std::atoi(local) > 0 ? std::atoi(local) : 1;
  return kib * 1024.0 / ranks;
}

void check_planned_memory(const PlanInput& in, double available) {
  DeviceSpec any;
  const Plan p = plan_layout(in, any);
  if (!p.problems.empty() || !(p.total() > available)) return;  // layout problems are reported where the layout is built
  const double gib = 1024.0 * 1024 * 1024;
  const ModelConfig& c = in.model;
  std::string cause;
  if (p.activations >= std::max({p.weights, p.grads, p.optimizer}))
    cause = strprintf("most of it activations: train.micro_batch = %lld, model.seq_len = %lld, model.d_model = %lld, "
                      "model.vocab_size = %lld", (long long)in.micro_batch, (long long)c.seq_len, (long long)c.d_model,
                      (long long)c.vocab_size);
  else
    cause = strprintf("most of it weights, gradients and optimizer state of %.3g parameters: model.vocab_size = %lld, "
                      "model.d_model = %lld, model.num_layers = %lld, model.num_experts = %lld",
                      static_cast<double>(count_parameters(c)), (long long)c.vocab_size, (long long)c.d_model,
                      (long long)c.num_layers, (long long)c.num_experts);
  throw UserError(strprintf(
      "this run needs about %.1f GiB per rank (weights %.1f, gradients %.1f, optimizer %.1f, activations %.1f GiB; %s) "
      "and this machine has %.1f GiB available per rank: make those sizes smaller, spread the model over more ranks "
      "(fivefold plan lists the layouts that fit), or set train.memory_check = false to try anyway",
      p.total() / gib, p.weights / gib, p.grads / gib, p.optimizer / gib, p.activations / gib, cause.c_str(),
      available / gib));
}

}  // namespace ff
