#include "cli/prune_command.h"

#include "cli/cli_config.h"
#include "core/check.h"
#include "io/progress.h"

namespace ff {

void add_prune_command(CLI::App& app, PruneCommand& cmd) {
  PruneRunOptions& o = cmd.options;
  PruneTargets& t = o.targets;
  auto* p = app.add_subcommand("prune", "structured pruning (Minitron): importance from calibration forwards, then a "
                                        "smaller model sliced to the target sizes (any parallel layout)");
  p->add_option("--model", o.model, "model file, checkpoint folder or Hugging Face folder")->required();
  p->add_option("--data", o.data, "calibration text or JSONL file, or an indexed-dataset PREFIX")->required();
  p->add_option("--out", o.out, "the pruned model file (.safetensors)")->required();
  p->add_option("--scores", o.scores, "write the importance scores here (JSON); default: OUT.scores.json");
  p->add_option("--calib_samples", o.calib_samples, "calibration windows of model.seq_len tokens")->capture_default_str();
  p->add_option("--micro_batch", o.micro_batch, "windows per forward")->capture_default_str();
  p->add_option("--part", o.part, "all | train | valid | test: the documents of --split that calibrate (train keeps "
                "the validation documents out of the scores)")->capture_default_str();
  p->add_option("--split", o.split, "train,valid,test ratios over the documents (as train.split)")
      ->capture_default_str();
  p->add_option("--target_d_model", t.d_model, "embedding channels to keep; 0 = all")->capture_default_str();
  p->add_option("--target_ffn_hidden", t.ffn_hidden, "FFN neurons to keep per MLP layer; 0 = all")->capture_default_str();
  p->add_option("--target_num_heads", t.num_heads, "attention query heads to keep (a multiple of num_kv_heads); 0 = all")
      ->capture_default_str();
  p->add_option("--target_mamba_num_heads", t.mamba_num_heads, "Mamba2 heads to keep (a multiple of mamba_groups); "
                "0 = all")->capture_default_str();
  p->add_option("--target_mamba_head_dim", t.mamba_head_dim, "Mamba2 head channels to keep; 0 = all")
      ->capture_default_str();
  p->add_option("--target_num_experts", t.num_experts, "routed experts to keep per MoE layer (the highest mean output "
                "norm; at least moe_top_k, a multiple of moe_router_groups and of --ep); 0 = all")->capture_default_str();
  p->add_option("--target_moe_ffn_hidden", t.moe_ffn_hidden, "neurons to keep in each routed expert (each its own "
                "best; a multiple of the expert-TP size); 0 = all")->capture_default_str();
  p->add_option("--target_layers", t.layers, "layers to keep (the lowest 1 - cos(in, out) go); 0 = all")
      ->capture_default_str();
  p->add_option("--group_aware", t.group_aware, "rank Mamba2 heads within their group (false: the group-unaware "
                "baseline)")->capture_default_str();
  ParallelConfig layout;
  CliRegistrar reg{*p, cmd.layout, "Parallel"};
  layout.visit_fields(reg);
  cmd.app = p;
}

int run_prune_command(const PruneCommand& cmd) {
  std::vector<std::string> errors;
  ParallelConfig pc;
  CliApplier a{cmd.layout, "parallel", errors};
  pc.visit_fields(a);
  Communicator world = Communicator::world();
  const auto layout = pc.validate(world.size());
  errors.insert(errors.end(), layout.begin(), layout.end());
  FF_CHECK(errors.empty(), "bad command line:%s", join_problems(errors).c_str());
  FF_CHECK(cmd.options.calib_samples >= 1 && cmd.options.micro_batch >= 1, "--calib_samples and --micro_batch must be >= 1");
  RunConfig threads;
  set_threads(threads);
  ParallelGrid grid(world, pc);
  PruneRunOptions o = cmd.options;
  o.progress = stderr_is_terminal();
  run_prune(o, grid);
  return 0;
}

}  // namespace ff
