// safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
// then the raw tensor bytes. fivefold's own reader and writer, F32 only for now.
// Reading validates everything against the file size before any data is touched: a header that
// lies about offsets, shapes or dtypes gives an error naming the file and the tensor.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ff {

struct SafetensorsEntry {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // F32
};

// Writes atomically: to path + ".tmp", fsync, then rename over path.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const;
  // Copies tensor `name` into out, checking that its shape equals `shape`.
  void read(const std::string& name, const std::vector<int64_t>& shape, float* out) const;

 private:
  struct Info {
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;
  };
  std::string path_;
  std::vector<char> bytes_;
  size_t data_start_ = 0;
  std::map<std::string, Info> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace ff
