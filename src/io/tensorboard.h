// TensorBoard event files, written without TensorFlow or protobuf: TFRecord framing (a length,
// its masked CRC32C, the record, its masked CRC32C) around Event protos (wall_time, step, and a
// Summary of scalar Values), encoded by hand. TensorBoard reads them as it reads TensorFlow's,
// also while the run goes on (each flush ends on a whole record).
//   DIR/events.out.tfevents.<unix seconds>.<host>.fivefold
#pragma once
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace ff {

// CRC-32C (Castagnoli), and the masking TFRecord applies: rotate right by 15, add 0xa282ead8.
uint32_t crc32c(const void* data, size_t bytes);
uint32_t masked_crc32c(const void* data, size_t bytes);

class TensorBoardWriter {
 public:
  // Creates dir and the event file, whose first record names the format ("brain.Event:2").
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void scalar(const std::string& tag, int64_t step, double value);
  // Every number of a metrics record as a scalar under its key (arrays as KEY/INDEX, nested ones
  // as KEY/I/J: expert_load/LAYER/EXPERT); the "step" field is the step, not a scalar.
  void scalars(const nlohmann::json& record, int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);
  void tree(const std::string& tag, const nlohmann::json& value, int64_t step);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace ff
