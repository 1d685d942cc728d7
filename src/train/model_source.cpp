#include "train/model_source.h"

#include <filesystem>
#include <functional>
#include <map>

#include "core/hash.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "models/hf_convert.h"
#include "io/safetensors.h"
#include "layers/linear.h"
#include "train/run_checkpoint.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace ff {

namespace {

// The Hugging Face folder's own tokenizer file, if it has one (SentencePiece first: Llama 2 style
// folders carry both, and their tokenizer.json is not byte-level BPE).
std::optional<TokenizerFile> hf_tokenizer(const std::string& dir) {
  if (fs::is_regular_file(dir + "/tokenizer.model"))
    return read_tokenizer_file(TokenizerType::sentencepiece, dir + "/tokenizer.model");
  if (fs::is_regular_file(dir + "/tokenizer.json")) return read_tokenizer_file(TokenizerType::bpe, dir + "/tokenizer.json");
  return std::nullopt;
}

// Copies this rank's slice of a global tensor into p.value.
void copy_slice(Param& p, const HostTensor& t) {
  const int64_t cols = p.global_shape.rank == 2 ? p.global_shape[1] : p.global_shape.numel();
  const int64_t rows = p.global_shape.rank == 2 ? p.local_shape[0] : 1;
  const int64_t lc = p.global_shape.rank == 2 ? p.local_shape[1] : p.local_shape.numel();
  const int64_t r0 = p.global_shape.rank == 2 ? p.local_offset[0] : 0;
  const int64_t c0 = p.global_shape.rank == 2 ? p.local_offset[1] : (p.local_offset.rank ? p.local_offset[0] : 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < lc; ++c) p.value[r * lc + c] = t.data[static_cast<size_t>((r0 + r) * cols + c0 + c)];
}

}  // namespace

ModelSource open_model_source(const std::string& path) {
  ModelSource s;
  FF_CHECK(fs::exists(path), "'%s': no such file or folder; give a model file (model.safetensors), a checkpoint "
           "folder or a Hugging Face model folder", path.c_str());
  if (fs::is_regular_file(path)) {
    s.kind = ModelSource::Kind::model_file;
    s.path = path;
    std::optional<SafetensorsFile> opened;
    try {
      opened.emplace(path);
    } catch (const Error& e) {
      FF_FAIL("'%s' is not a model: a model is a fivefold model file (model.safetensors), a checkpoint folder or a "
              "Hugging Face model folder (%s)", path.c_str(), e.what());
    }
    const SafetensorsFile& f = *opened;
    FF_CHECK(f.metadata().count("fivefold_config"), "'%s' is a safetensors file without fivefold_config metadata: not "
             "a fivefold model file (a Hugging Face model is a folder with config.json; give the folder)", path.c_str());
    s.config = load_model_config(path);
    auto it = f.metadata().find("fivefold_tokenizer");
    if (it != f.metadata().end()) s.tokenizer = tokenizer_file_from_json(it->second, path);
    return s;
  }
  if (fs::is_regular_file(path + "/config.json") && !fs::exists(path + "/meta.json") && !fs::exists(path + "/latest")) {
    s.kind = ModelSource::Kind::hugging_face;
    s.path = path;
    s.config.model = import_hf_config(path);
    s.config.train.model_preset = "";
    s.tokenizer = hf_tokenizer(path);
    // Without a tokenizer in the folder the config names none (not the defaults' file), so that
    // nothing pairs the model with a tokenizer it was not made with.
    s.config.train.tokenizer_type = s.tokenizer ? s.tokenizer->type : TokenizerType::sentencepiece;
    s.config.train.tokenizer_path = s.tokenizer ? s.tokenizer->name : "";
    return s;
  }
  s.kind = ModelSource::Kind::checkpoint;
  s.path = resolve_checkpoint(path);
  s.config = checkpoint_run_config(s.path);
  return s;
}

LoadReport load_model_source(const ModelSource& source, DecoderLM& model, const std::vector<std::string>& allow_new,
                             const TensorTransform& transform) {
  // The source's tensors at their global shapes, by fivefold name: read one at a time from a
  // model file; a checkpoint's are assembled from its chunks, a Hugging Face folder's converted.
  std::optional<SafetensorsFile> file;
  TensorMap all;
  std::vector<std::string> names;
  if (source.kind == ModelSource::Kind::model_file) {
    file.emplace(source.path);
    names = file->names();
  } else {
    all = source.kind == ModelSource::Kind::checkpoint ? read_checkpoint_model(source.path) : import_hf(source.path).tensors;
    for (const auto& [name, t] : all) names.push_back(name);
  }
  std::map<std::string, bool> used;
  for (const auto& n : names) used[n] = false;
  const TensorFetch source_tensor = [&](const std::string& name, HostTensor& out) {
    if (file) {
      if (!file->contains(name)) return false;
      out = file->read_any(name);
    } else {
      auto it = all.find(name);
      if (it == all.end()) return false;
      out = it->second;  // a copy: a transform may read one source tensor for several
    }
    used[name] = true;
    return true;
  };
  auto fetch = [&](const std::string& name, HostTensor& out) {
    return transform ? transform(source_tensor, name, out) : source_tensor(name, out);
  };
  LoadReport report;
  HostTensor t;
  for (Param& p : model.params().params()) {
    if (!fetch(p.name, t)) {
      // New LoRA adapters (B = 0: the model starts as the source) and a recipe's training-only
      // parameters are expected, not an error.
      FF_CHECK(matches_any(p.name, allow_new) || is_adapter_name(p.name) || is_training_only_name(p.name), "'%s' has no tensor '%s' that this model needs (if it is new, e.g. a "
               "fresh head, allow it with --init_new \"%s\")", source.path.c_str(), p.name.c_str(), p.name.c_str());
      report.fresh.push_back(p.name);
      continue;
    }
    FF_CHECK(t.shape == p.global_shape.vec(), "'%s': tensor '%s' has shape %s; this model's config needs %s (the model "
             "fields must match the source's: check the flags or config that change its sizes)", source.path.c_str(),
             p.name.c_str(), Shape::from(t.shape).str().c_str(), p.global_shape.str().c_str());
    copy_slice(p, t);
    ++report.loaded;
  }
  for (const auto& b : model.state_buffers()) {
    if (!fetch(b.name, t)) continue;
    FF_CHECK(t.data.size() == b.data->size(), "'%s': buffer '%s' has %zu values; this model needs %zu",
             source.path.c_str(), b.name.c_str(), t.data.size(), b.data->size());
    *b.data = t.data;
  }
  for (const auto& [name, u] : used)
    if (!u) report.unused.push_back(name);
  model.mark_values_changed();
  return report;
}

TokenizerFile model_tokenizer(const ModelSource& source, const std::optional<TokenizerFile>& explicit_tokenizer) {
  if (explicit_tokenizer) return *explicit_tokenizer;
  if (source.tokenizer) return *source.tokenizer;
  const TrainConfig& t = source.config.train;
  if (t.tokenizer_type == TokenizerType::byte) return TokenizerFile{};
  FF_CHECK(fs::is_regular_file(t.tokenizer_path), "'%s' carries no tokenizer and the one it was trained with (%s %s) "
           "is not here; give --tokenizer_type and --tokenizer_path", source.path.c_str(),
           enum_to_string(t.tokenizer_type).c_str(), t.tokenizer_path.c_str());
  return read_tokenizer_file(t.tokenizer_type, t.tokenizer_path);
}

std::string materialise_tokenizer(const TokenizerFile& t, const std::string& dir, const Communicator& world) {
  if (t.type == TokenizerType::byte) return "";
  const uint64_t h = fnv1a(t.bytes);
  const std::string path = strprintf("%s/tokenizer-%08llx%s", dir.c_str(), (unsigned long long)(h & 0xffffffffu),
                                     t.type == TokenizerType::sentencepiece ? ".model" : ".json");
  if (world.rank() == 0 && !fs::is_regular_file(path)) {
    fs::create_directories(dir);
    write_file_atomically(path, t.bytes);
  }
  world.barrier();
  return path;
}

TokenizerFile run_tokenizer_file(const RunConfig& c) {
  return read_tokenizer_file(c.train.tokenizer_type, c.train.tokenizer_path);
}

}  // namespace ff
