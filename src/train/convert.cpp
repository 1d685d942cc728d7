#include "train/convert.h"

#include <cstdio>
#include <filesystem>

#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/progress.h"
#include "models/hf_convert.h"
#include "train/lora_merge.h"
#include "train/model_source.h"
#include "train/trainer.h"

namespace ff {

void run_convert(const ConvertOptions& o) {
  FF_CHECK((o.to == "hf") != (o.from == "hf"), "convert: give exactly one of --to hf or --from hf");
  FF_CHECK(!o.out.empty(), "convert: --out is required");
  if (o.to == "hf") {
    FF_CHECK(!o.checkpoint.empty(), "convert --to hf: --checkpoint (a checkpoint folder or model file) is required");
    FF_CHECK(o.dtype == "f32" || o.dtype == "bf16", "--dtype %s: choose f32 or bf16", o.dtype.c_str());
    FF_CHECK(o.max_shard_mb > 0, "--max_shard_mb %lld: must be > 0", (long long)o.max_shard_mb);
    const ModelSource src = open_model_source(o.checkpoint);
    FF_CHECK(src.kind != ModelSource::Kind::hugging_face, "convert --to hf: '%s' is already a Hugging Face folder",
             o.checkpoint.c_str());
    RunConfig cfg = src.config;
    TensorMap tensors;
    if (src.kind == ModelSource::Kind::model_file) {
      SafetensorsFile f(src.path);
      for (const auto& n : f.names()) tensors[n] = f.read_any(n);
    } else {
      tensors = read_checkpoint_model(src.path);
    }
    if (cfg.model.lora_rank > 0) {
      FF_CHECK(o.merge_lora, "convert --to hf: '%s' carries LoRA adapters, which the Hugging Face layout has no place "
               "for; give --merge_lora to fold them into the weights", o.checkpoint.c_str());
      merge_lora(cfg.model, tensors);
    }
    HfExportOptions e;
    e.family = o.family;
    e.bf16 = o.dtype == "bf16";
    e.max_shard_bytes = o.max_shard_mb << 20;
    e.progress = stderr_is_terminal();
    export_hf(cfg.model, tensors, o.out, e);
    // The tokenizer travels with the model, under the name Hugging Face folders give it.
    std::string tokenizer_note = "; no tokenizer (the model carries none)";
    if (src.tokenizer && src.tokenizer->type != TokenizerType::byte) {
      const std::string name = src.tokenizer->type == TokenizerType::sentencepiece ? "tokenizer.model" : "tokenizer.json";
      write_file_atomically(o.out + "/" + name, src.tokenizer->bytes);
      tokenizer_note = " and " + name;
    }
    std::printf("wrote %s (Hugging Face %s layout, %zu fivefold tensors%s)\n", o.out.c_str(),
                hf_family_name(hf_family_for(cfg.model, o.family)), tensors.size(), tokenizer_note.c_str());
    return;
  }
  FF_CHECK(!o.in.empty(), "convert --from hf: --in (a Hugging Face model folder) is required");
  const ModelSource src = open_model_source(o.in);
  FF_CHECK(src.kind == ModelSource::Kind::hugging_face, "convert --from hf: '%s' is not a Hugging Face model folder "
           "(config.json + safetensors)", o.in.c_str());
  RunConfig c = src.config;
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(c.model, grid, c.train.seed);
  const LoadReport report = load_model_source(src, model);
  FF_CHECK(report.unused.empty(), "'%s': tensor '%s' has no fivefold parameter", o.in.c_str(), report.unused[0].c_str());
  save_model(model, c, o.out, src.tokenizer ? &*src.tokenizer : nullptr, world.rank() == 0 && stderr_is_terminal());
  std::printf("wrote %s (%.2fM parameters%s)\n", o.out.c_str(), static_cast<double>(model.params().numel()) / 1e6,
              src.tokenizer ? (", tokenizer " + src.tokenizer->name).c_str() : ", no tokenizer in the folder");
}

}  // namespace ff
