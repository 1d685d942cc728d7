// A model named by a path, as `train --init_from`, `eval`, `generate` and `convert` take it:
//   a fivefold model file   model.safetensors written by train or by convert --from hf, with its run
//                           config (and usually its tokenizer) in the metadata;
//   a checkpoint            a checkpoint folder, or a save folder with `latest`, of any layout;
//   a Hugging Face folder   config.json + safetensors (Llama, Mixtral, Qwen2-MoE), converted in
//                           memory, with tokenizer.model or tokenizer.json when the folder has one.
// Its weights load into a model of any parallel layout: each rank keeps its own slices.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "models/decoder_lm.h"
#include "train/config.h"

namespace ff {

struct ModelSource {
  enum class Kind { model_file, checkpoint, hugging_face };
  Kind kind = Kind::model_file;
  std::string path;    // the file or folder (a checkpoint: the step folder `latest` named)
  RunConfig config;    // what it was made with; from Hugging Face: the converted config.json, defaults elsewhere
  std::optional<TokenizerFile> tokenizer;  // the tokenizer it carries
};

// Errors say what was found at `path` instead of a model.
ModelSource open_model_source(const std::string& path);

struct LoadReport {
  int64_t loaded = 0;                  // parameters filled from the source
  std::vector<std::string> fresh;      // parameters the source lacks, left at their initialisation
  std::vector<std::string> unused;     // source tensors no parameter took
};
// A model's global tensor by name (false: it has none).
using TensorFetch = std::function<bool(const std::string& name, HostTensor& out)>;
// The tensor `name` of the model being loaded, made from the source's (transform(fetch, name,
// out); false: none), e.g. an MoE's experts from a dense model's MLP (train/upcycle.h).
using TensorTransform = std::function<bool(const TensorFetch& source, const std::string& name, HostTensor& out)>;

// Fills every parameter this rank holds from the source (its global tensor, then this rank's
// slice). A parameter missing from the source is an error unless it matches one of allow_new;
// a global shape that differs is always an error; both name the tensor. With a transform, the
// source's tensors reach the model through it.
LoadReport load_model_source(const ModelSource& source, DecoderLM& model, const std::vector<std::string>& allow_new = {},
                             const TensorTransform& transform = nullptr);

// The tokenizer a model is used with: the one the user named (explicit), else the one the model
// carries, else the one its run config names if that file exists; otherwise an error that says
// to give --tokenizer_type / --tokenizer_path. A model is never paired with a tokenizer silently.
TokenizerFile model_tokenizer(const ModelSource& source, const std::optional<TokenizerFile>& explicit_tokenizer);

// A carried tokenizer as a file a run can prepare data with: DIR/tokenizer-HASH.model (or .json),
// HASH from its bytes, so data prepared with it is keyed by its content. Rank 0 writes it if
// absent; collective over world. Returns the path (empty for the byte tokenizer).
std::string materialise_tokenizer(const TokenizerFile& t, const std::string& dir, const Communicator& world);

// The tokenizer a training run used, for its model file to carry.
TokenizerFile run_tokenizer_file(const RunConfig& c);

}  // namespace ff
