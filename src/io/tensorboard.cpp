#include "io/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/check.h"

namespace ff {

namespace {

std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;  // the reflected Castagnoli polynomial
    t[i] = c;
  }
  return t;
}

// Protocol-buffer wire format: a field's key is (number << 3) | wire type.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
template <class T>
void put_fixed(std::string& out, T v) {  // little-endian, as x86 holds it
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | 2);
  put_varint(out, bytes.size());
  out += bytes;
}

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
std::string event_header(int64_t step) {
  std::string e;
  put_varint(e, 1 << 3 | 1);
  put_fixed(e, wall_time());
  put_varint(e, 2 << 3 | 0);
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

}  // namespace

uint32_t crc32c(const void* data, size_t bytes) {
  static const std::array<uint32_t, 256> table = crc32c_table();
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < bytes; ++i) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

uint32_t masked_crc32c(const void* data, size_t bytes) {
  const uint32_t c = crc32c(data, bytes);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::filesystem::create_directories(dir);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  path_ = strprintf("%s/events.out.tfevents.%lld.%s.fivefold", dir.c_str(), (long long)wall_time(), host);
  file_ = std::fopen(path_.c_str(), "ab");
  FF_CHECK(file_ != nullptr, "train.tensorboard_dir: cannot write the event file '%s'", path_.c_str());
  std::string e = event_header(0);
  put_bytes(e, 3, "brain.Event:2");
  write_record(e);
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::write_record(const std::string& event) {
  std::string r;
  const uint64_t n = event.size();
  put_fixed(r, n);
  put_fixed(r, masked_crc32c(r.data(), 8));
  r += event;
  put_fixed(r, masked_crc32c(event.data(), event.size()));
  FF_CHECK(std::fwrite(r.data(), 1, r.size(), file_) == r.size(), "cannot write to the event file '%s'", path_.c_str());
}

void TensorBoardWriter::scalar(const std::string& tag, int64_t step, double value) {
  // Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
  std::string v;
  put_bytes(v, 1, tag);
  put_varint(v, 2 << 3 | 5);
  put_fixed(v, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, 1, v);
  std::string e = event_header(step);
  put_bytes(e, 5, summary);
  write_record(e);
}

// A number is one scalar under its key; an array's numbers go under key/i, and nested arrays
// under key/i/j (expert_load: layer/expert), as far down as they nest.
void TensorBoardWriter::scalars(const nlohmann::json& record, int64_t step) {
  for (const auto& [key, value] : record.items())
    if (key != "step") tree(key, value, step);
}

void TensorBoardWriter::tree(const std::string& tag, const nlohmann::json& value, int64_t step) {
  if (value.is_number()) scalar(tag, step, value.get<double>());
  if (value.is_array())
    for (size_t i = 0; i < value.size(); ++i) tree(tag + "/" + std::to_string(i), value[i], step);
}

void TensorBoardWriter::flush() {
  FF_CHECK(std::fflush(file_) == 0, "cannot write to the event file '%s'", path_.c_str());
}

}  // namespace ff
