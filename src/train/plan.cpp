#include "train/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>

#include "models/decoder_lm.h"
#include "train/flops.h"
#include "train/pipeline.h"

namespace ff {

namespace {

constexpr double kFloat = 4.0;  // bytes

int64_t fc1(const ModelConfig& c, int64_t F) { return c.activation == Activation::swiglu ? 2 * F : F; }

// Parameters of pattern layer `kind` held by one rank: {dense, expert}.
std::pair<double, double> layer_params(const ModelConfig& c, LayerKind kind, const ParallelConfig& p) {
  const double D = static_cast<double>(c.d_model), T = static_cast<double>(p.tp);
  const double norm = c.norm == NormKind::layernorm1p ? 2 * D : D;
  const double dh = static_cast<double>(c.kv_channels());
  switch (kind) {
    case LayerKind::attention:
      return {norm + (D * dh * static_cast<double>(c.num_heads + 2 * c.num_kv_heads) + dh * c.num_heads * D) / T, 0};
    case LayerKind::mlp:
      return {norm + (D * fc1(c, c.ffn_hidden) + c.ffn_hidden * D) / T, 0};
    case LayerKind::moe: {
      double shared = c.moe_shared_expert_hidden > 0
                          ? (D * fc1(c, c.moe_shared_expert_hidden) + c.moe_shared_expert_hidden * D) / T +
                                (c.moe_shared_expert_gate ? D : 0)
                          : 0;
      double experts = static_cast<double>(c.num_experts / p.ep) *
                       (D * fc1(c, c.moe_ffn_hidden) + c.moe_ffn_hidden * D) / static_cast<double>(p.expert_tp());
      return {norm + c.num_experts * D + shared, experts};
    }
    case LayerKind::mamba: return {0, 0};
  }
  return {0, 0};
}

// The routed experts' LoRA adapters one rank holds in one MoE layer: per local expert and adapted
// projection the factor held whole (r D) and the one sliced over ETP (r F / ETP).
double expert_adapter_params(const ModelConfig& c, const ParallelConfig& p) {
  if (c.lora_rank == 0) return 0;
  const bool swiglu = c.activation == Activation::swiglu;
  const double projections = (swiglu && c.lora_adapts("experts.gate_proj") ? 1.0 : 0.0) +
                             (c.lora_adapts("experts.up_proj") ? 1.0 : 0.0) + (c.lora_adapts("experts.down_proj") ? 1.0 : 0.0);
  return static_cast<double>(c.num_experts / p.ep) * projections * static_cast<double>(c.lora_rank) *
         (static_cast<double>(c.d_model) + static_cast<double>(c.moe_ffn_hidden) / static_cast<double>(p.expert_tp()));
}

// Bytes saved for backward by one micro-batch in pattern layer `kind` on one rank. fp32 buffers
// count 4 bytes a value; GEMM operands kept for the weight gradients count `copy` bytes more (2
// under bf16, where they are bf16 copies beside the fp32 values; 0 under fp32, where they are
// views).
double layer_activations(const ModelConfig& c, LayerKind kind, const ParallelConfig& p, int64_t B) {
  const double D = static_cast<double>(c.d_model), T = static_cast<double>(p.tp);
  const double N = static_cast<double>(B * c.seq_len / p.cp);          // rows of attention / MLP regions
  const double Ns = p.sequence_parallel ? N / T : N;                   // rows of the residual stream
  const double gathered = p.sequence_parallel && p.tp > 1 ? N * D : 0;  // a region's gathered input
  const double partial = p.tp > 1 ? N * D : 0;                          // a row-parallel GEMM's partial sums
  const double dh = static_cast<double>(c.kv_channels());
  const bool bf16 = c.precision == Precision::bf16;
  const double copy = bf16 ? 2.0 : 0.0;  // bytes per value of an operand copy (none under fp32)
  // A dense MLP region of hidden width F (an MLP layer, the shared expert): fc1's fp32 output, the
  // fp32 activation (none under bf16 SwiGLU, which writes its bf16 operand directly) and the
  // operand copies of the input and the activation.
  auto mlp_region = [&](int64_t F) {
    const bool fused = bf16 && c.activation == Activation::swiglu;
    return (gathered + partial + N * static_cast<double>(fc1(c, F) + (fused ? 0 : F)) / T) * kFloat +
           (N * D + N * static_cast<double>(F) / T) * copy;
  };
  double a = (2 * Ns * D + 2 * Ns) * kFloat;  // the layer's output stream, its norm output and statistics
  switch (kind) {
    case LayerKind::attention: {
      a += (gathered + partial + N * dh * (c.num_heads + 2 * c.num_kv_heads) / T + N * dh * c.num_heads / T +
            N * c.num_heads / T) * kFloat;
      a += (N * D + N * dh * c.num_heads / T) * copy;  // the input and o as operands
      if (p.cp > 1)  // gathered K/V of whole sequences, the query chunks and their outputs
        a += (static_cast<double>(B * c.seq_len) * 2 * dh * c.num_kv_heads / T + 2 * N * dh * c.num_heads / T) * kFloat;
      break;
    }
    case LayerKind::mlp: a += mlp_region(c.ffn_hidden); break;
    case LayerKind::moe: {
      const double E = static_cast<double>(c.num_experts), K = static_cast<double>(c.moe_top_k);
      const double F = static_cast<double>(c.moe_ffn_hidden) / static_cast<double>(p.expert_tp());
      const double R = Ns * K * static_cast<double>(p.expert_tp());  // rows this rank's experts compute, on average
      const bool swiglu = c.activation == Activation::swiglu;      // fused: the activation is recomputed
      a += (Ns * E * 3 + Ns * K * 2) * kFloat;                     // logits, scores, aux scores, routing
      const double W = fc1(c, c.moe_ffn_hidden) / static_cast<double>(p.expert_tp());
      a += (2 * Ns * K * D + R * (2 * D + (swiglu ? 0 : F))) * kFloat;
      a += R * W * (swiglu && bf16 ? 2.0 : kFloat);  // the pre-activation (bf16 under bf16 SwiGLU)
      a += R * F * (bf16 ? 2.0 : kFloat) + R * D * copy;  // the scaled activation and the rows as operands
      if (c.moe_shared_expert_hidden > 0) a += mlp_region(c.moe_shared_expert_hidden) + Ns * D * kFloat;
      break;
    }
    case LayerKind::mamba: break;
  }
  return a;
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
  // and ETP, sharded over expert-DP, counted per MoE layer.
  int64_t moe_layers = 0;
  for (LayerKind k : kinds) moe_layers += k == LayerKind::moe;
  const ParallelConfig one_rank;
  const double all_expert_adapters = static_cast<double>(moe_layers) * expert_adapter_params(c, one_rank);
  const double adapters = static_cast<double>(count_parameters(c) - count_parameters(no_adapters)) - all_expert_adapters;
  for (int64_t stage = 0; stage < p.pp; ++stage) {
    double dense = 0, expert = 0, act = 0, stage_layers = 0, expert_adapters = 0;
    for (int64_t chunk = 0; chunk < p.virtual_stages; ++chunk) {
      const int64_t vs = chunk * p.pp + stage;
      for (int64_t j = vs * L / VS; j < (vs + 1) * L / VS; ++j) {
        auto [d, e] = layer_params(c, kinds[static_cast<size_t>(j)], p);
        dense += d;
        expert += e;
        act += layer_activations(c, kinds[static_cast<size_t>(j)], p, B);
        if (kinds[static_cast<size_t>(j)] == LayerKind::moe) expert_adapters += expert_adapter_params(c, p);
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
  auto ring = [](double bytes, double n) { return n > 1 ? 2 * (n - 1) / n * bytes : 0.0; };
  double bytes = ring(plan.grads, dp_cp);  // DP gradient reduction (dense; experts over EDP, approximated alike)
  double steps = dp_cp > 1 ? 2 * (dp_cp - 1) : 0;  // latency-bound ring steps
  int64_t attn = 0, mlp = 0, moe = 0;
  for (LayerKind k : kinds) {
    attn += k == LayerKind::attention;
    mlp += k == LayerKind::mlp;
    moe += k == LayerKind::moe;
  }
  const double per_mb_layers = static_cast<double>(attn + mlp + (c.moe_shared_expert_hidden > 0 ? moe : 0)) /
                               static_cast<double>(p.pp);
  bytes += static_cast<double>(M) * per_mb_layers * 2 * ring(N * D * kFloat, T);  // TP: forward and backward
  if (p.tp > 1) steps += static_cast<double>(M) * per_mb_layers * 2 * 2 * (T - 1);
  if (p.cp > 1)  // K/V all-gather forward, reduce-scatter backward
    bytes += static_cast<double>(M * attn / p.pp) * 2 * static_cast<double>(p.cp - 1) / static_cast<double>(p.cp) *
             static_cast<double>(B * c.seq_len) * 2 * static_cast<double>(c.kv_channels() * c.num_kv_heads) / T * kFloat;
  if (p.cp > 1) steps += static_cast<double>(M * attn / p.pp) * 2 * static_cast<double>(p.cp - 1);
  if (p.ep > 1)  // dispatch and combine, forward and backward, of K copies of each token
    bytes += static_cast<double>(M * moe / p.pp) * 4 * static_cast<double>(p.ep - 1) / static_cast<double>(p.ep) * Ns *
             static_cast<double>(c.moe_top_k) * D * kFloat;
  if (p.ep > 1) steps += static_cast<double>(M * moe / p.pp) * 5 * static_cast<double>(p.ep - 1);  // + counts
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
