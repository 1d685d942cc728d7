#include "train/convert.h"

#include <cstdio>
#include <filesystem>

#include "io/checkpoint.h"
#include "io/hf_convert.h"
#include "train/trainer.h"

namespace ff {

namespace {

// The model config and every model tensor of a checkpoint folder or a model file.
std::pair<RunConfig, TensorMap> read_source(const std::string& path) {
  if (std::filesystem::is_regular_file(path)) {
    RunConfig c = load_model_config(path);
    SafetensorsFile f(path);
    TensorMap t;
    for (const auto& n : f.names()) t[n] = f.read_any(n);
    return {c, std::move(t)};
  }
  const std::string folder = resolve_checkpoint(path);
  TrainingState s = read_checkpoint_state(folder, 0);
  return {run_config_from_json(s.config_json, folder + "/meta.json (config)"), read_checkpoint_model(folder)};
}

}  // namespace

void run_convert(const ConvertOptions& o) {
  FF_CHECK((o.to == "hf") != (o.from == "hf"), "convert: give exactly one of --to hf or --from hf");
  FF_CHECK(!o.out.empty(), "convert: --out is required");
  if (o.to == "hf") {
    FF_CHECK(!o.checkpoint.empty(), "convert --to hf: --checkpoint (a checkpoint folder or model file) is required");
    FF_CHECK(o.dtype == "f32" || o.dtype == "bf16", "--dtype %s: choose f32 or bf16", o.dtype.c_str());
    FF_CHECK(o.max_shard_mb > 0, "--max_shard_mb %lld: must be > 0", (long long)o.max_shard_mb);
    auto [cfg, tensors] = read_source(o.checkpoint);
    HfExportOptions e;
    e.family = o.family;
    e.bf16 = o.dtype == "bf16";
    e.max_shard_bytes = o.max_shard_mb << 20;
    export_hf(cfg.model, tensors, o.out, e);
    std::printf("wrote %s (Hugging Face %s layout, %zu fivefold tensors)\n", o.out.c_str(),
                hf_family_name(hf_family_for(cfg.model, o.family)), tensors.size());
    return;
  }
  FF_CHECK(!o.in.empty(), "convert --from hf: --in (a Hugging Face model folder) is required");
  HfImport imp = import_hf(o.in);
  RunConfig c;
  c.model = imp.model;
  c.train.model_preset = "";
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(c.model, grid, c.train.seed);
  for (Param& p : model.params().params()) {
    auto it = imp.tensors.find(p.name);
    FF_CHECK(it != imp.tensors.end(), "'%s': no tensor for fivefold parameter '%s'", o.in.c_str(), p.name.c_str());
    FF_CHECK(it->second.shape == p.global_shape.vec(), "'%s': tensor for '%s' has shape %s, config.json implies %s",
             o.in.c_str(), p.name.c_str(), Shape::from(it->second.shape).str().c_str(), p.global_shape.str().c_str());
    std::copy(it->second.data.begin(), it->second.data.end(), p.value);
    imp.tensors.erase(it);
  }
  FF_CHECK(imp.tensors.empty(), "'%s': tensor '%s' has no fivefold parameter", o.in.c_str(),
           imp.tensors.begin()->first.c_str());
  save_model(model, c, o.out);
  std::printf("wrote %s (%s, %.2fM parameters)\n", o.out.c_str(), hf_family_name(imp.family),
              static_cast<double>(model.params().numel()) / 1e6);
}

}  // namespace ff
