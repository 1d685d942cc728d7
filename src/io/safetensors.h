// safetensors files (https://huggingface.co/docs/safetensors, specs/formats.md): an 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {...}}, then the raw tensor bytes. fivefold's own reader and writer.
// Dtypes: F32, BF16 and F16 are read (widened to fp32 exactly) and written.
// Reading memory-maps the file and validates the whole header against the file size before any
// data is touched: a header that lies about offsets, shapes or dtypes, overlapping or missing
// data, or a truncated file gives an error naming the file and the tensor, never a crash.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ff {

enum class StDtype : uint8_t { F32, BF16, F16 };
size_t st_dtype_size(StDtype t);
const char* st_dtype_name(StDtype t);

// fp32 <-> bf16 (round to nearest even; NaN stays NaN) and fp16 -> fp32.
uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t x);
float f16_to_f32(uint16_t x);

struct SafetensorsEntry {
  std::string name;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // row-major elements of `dtype`
  StDtype dtype = StDtype::F32;
};

class Progress;
// Writes atomically: to path + ".tmp", fsync, then rename over path. progress (optional) is
// advanced by each tensor's bytes as they are written.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata, Progress* progress = nullptr);
// The bytes of the tensors' data (what write_safetensors advances a progress by).
int64_t safetensors_data_bytes(const std::vector<SafetensorsEntry>& tensors);

// A whole tensor in host memory, fp32 (conversion and checkpoint assembly work on these).
struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

class SafetensorsFile {
 public:
  struct Info {
    StDtype dtype = StDtype::F32;
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;  // within the data section
  };

  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& o) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(SafetensorsFile&&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const;
  // The tensor's header entry; an error naming the tensor and the file if it is missing.
  const Info& info(const std::string& name) const;
  // Its bytes in the mapped file (valid while this object lives).
  const void* raw(const std::string& name) const;
  // Copies tensor `name` into out as fp32, checking that its shape equals `shape`.
  void read(const std::string& name, const std::vector<int64_t>& shape, float* out) const;
  // Same, requiring dtype F32 (training state must be exact).
  void read_f32_exact(const std::string& name, const std::vector<int64_t>& shape, float* out) const;
  HostTensor read_any(const std::string& name) const;

 private:
  std::string path_;
  const char* map_ = nullptr;  // the whole file, read-only
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::map<std::string, Info> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace ff
