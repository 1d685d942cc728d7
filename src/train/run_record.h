// What a training run writes into its out_dir for people and tools that read it afterwards
// (`fivefold report`): the resolved config and the parallel layout at start, and per step the
// numbers that are the same under every layout: the expert load of every MoE layer over the
// whole global batch, and the job's peak resident memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/decoder_lm.h"
#include "parallel/grid.h"
#include "train/config.h"

namespace ff {

// out_dir/run_config.json: the resolved config (`fivefold train --config` takes it back), and
// out_dir/layout.json: the grid's sizes {world_size, tp, cp, dp, pp, ep, etp, edp,
// sequence_parallel}. Each written atomically; call on the lead rank only.
void write_run_description(RunConfig& cfg, const ParallelGrid& grid);
std::string layout_to_json(const ParallelGrid& grid);

// The step's kept (token, expert) slots of every MoE layer of the model, [moe_layers][E], summed
// over every rank that routes its own tokens, so the same numbers under every layout:
// stage_load is this rank's PipelineResult::expert_load (its chunks' MoE layers in chunk order,
// E counts each, over its micro-batches). Each stage places its layers at their index among all
// the model's MoE layers ('E' in the pattern); TP ranks without sequence parallelism route the
// same rows, so only TP rank 0 of them counts. Collective over the whole job.
std::vector<std::vector<double>> global_expert_load(const std::vector<int64_t>& stage_load, const DecoderLM& model,
                                                    const ModelConfig& cfg, const ParallelGrid& grid);

// Each layer's counts as shares of its kept slots (each row sums to 1; a row with none stays 0).
std::vector<std::vector<double>> load_shares(const std::vector<std::vector<double>>& counts);

// The process's resident-set high-water mark (getrusage ru_maxrss), in bytes: this rank's, and
// the largest over the job (collective).
double resident_peak_bytes();
double job_resident_peak_bytes(const ParallelGrid& grid);

}  // namespace ff
