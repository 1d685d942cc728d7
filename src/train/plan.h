// `fivefold plan`: per-rank memory and an estimated step time for a model under a parallel layout,
// computed from the config alone (DESIGN decision 7), without building or running the model; and
// the list of the layouts of a world size that fit a device, best first.
// The model follows what fivefold allocates: fp32 weights and gradients, Adam moments (sharded by
// the distributed optimizer), and the activations every micro-batch record keeps for backward.
#pragma once
#include <string>
#include <vector>

#include "models/config.h"
#include "parallel/grid.h"

namespace ff {

struct DeviceSpec {
  double memory_gib = 24;      // per rank
  double gemm_tflops = 0.2;    // measured fp32 GEMM ceiling per rank
  double efficiency = 0.75;    // fraction of that ceiling a training step reaches (measured: bench)
  double link_gbytes = 5.0;    // bandwidth of a collective's link per rank, GB/s
  double latency_us = 20.0;    // fixed cost of one message / ring step, microseconds
};

struct PlanInput {
  ModelConfig model;
  ParallelConfig layout;
  int64_t world = 1;
  int64_t micro_batch = 1, grad_accum = 1;
  bool distributed_optimizer = false;
};

struct Plan {
  // Bytes on the most loaded rank.
  double weights = 0, grads = 0, optimizer = 0, activations = 0;
  double total() const { return weights + grads + optimizer + activations; }
  // Seconds per optimizer step.
  double compute_s = 0, communication_s = 0, bubble_s = 0;
  double step_s() const { return compute_s + communication_s + bubble_s; }
  double communication_share() const { return step_s() > 0 ? communication_s / step_s() : 0; }
  std::vector<std::string> problems;  // why the layout cannot run (empty: it can)
};

Plan plan_layout(const PlanInput& in, const DeviceSpec& device);

// Every valid layout (tp, cp, pp, ep, etp in {1, tp}, sequence parallelism when tp > 1) of
// in.world ranks, with its plan; those that fit the device's memory first, by step time.
std::vector<std::pair<ParallelConfig, Plan>> plan_all_layouts(const PlanInput& in, const DeviceSpec& device);

// One line per layout: sizes, memory split, step time and communication share.
std::string plan_table(const std::vector<std::pair<ParallelConfig, Plan>>& plans, const DeviceSpec& device);

// Bytes of memory available to each rank of this job on this machine: the kernel's MemAvailable
// shared among the job's ranks here (Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE; 1 without mpirun).
double available_memory_per_rank();

// Refuses (a UserError naming the fields that drive the largest part, the bytes needed and the
// bytes available) a run whose planned memory per rank exceeds `available` bytes, so that sizes
// too large end in one clear error before anything is allocated rather than in std::bad_alloc.
// The same verdict on every rank (it depends on the config and layout only).
void check_planned_memory(const PlanInput& in, double available);

}  // namespace ff
