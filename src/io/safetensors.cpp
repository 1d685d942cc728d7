#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/atomic_file.h"
#include "io/progress.h"

namespace ff {

namespace {
constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;  // the reference implementation's limit

bool parse_dtype(const std::string& s, StDtype& out) {
  if (s == "F32") out = StDtype::F32;
  else if (s == "BF16") out = StDtype::BF16;
  else if (s == "F16") out = StDtype::F16;
  else return false;
  return true;
}

size_t numel_of(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
}  // namespace

size_t st_dtype_size(StDtype t) { return t == StDtype::F32 ? 4 : 2; }
const char* st_dtype_name(StDtype t) {
  switch (t) {
    case StDtype::F32: return "F32";
    case StDtype::BF16: return "BF16";
    case StDtype::F16: return "F16";
  }
  return "?";
}

uint16_t f32_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float bf16_to_f32(uint16_t x) {
  uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        man <<= 1;
        ++e;
      } while ((man & 0x400u) == 0);
      u = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
    }
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

int64_t safetensors_data_bytes(const std::vector<SafetensorsEntry>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += static_cast<int64_t>(numel_of(t.shape) * st_dtype_size(t.dtype));
  return n;
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata, Progress* progress) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& t : tensors) {
    const size_t bytes = numel_of(t.shape) * st_dtype_size(t.dtype);
    FF_CHECK(!header.contains(t.name), "writing '%s': tensor '%s' appears twice", path.c_str(), t.name.c_str());
    header[t.name] = {{"dtype", st_dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data to 8 bytes
  AtomicFile f(path);
  uint64_t len = h.size();
  f.write(&len, 8);
  f.write(h.data(), h.size());
  for (const auto& t : tensors) {
    const size_t bytes = numel_of(t.shape) * st_dtype_size(t.dtype);
    f.write(t.data, bytes);
    if (progress) progress->advance(static_cast<int64_t>(bytes));
  }
  f.commit();
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const char* p = path.c_str();
  int fd = ::open(p, O_RDONLY);
  FF_CHECK(fd >= 0, "cannot open safetensors file '%s': %s", p, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    FF_FAIL("cannot stat '%s': %s", p, std::strerror(errno));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    FF_FAIL("'%s': %zu bytes is too short for a safetensors file (truncated?)", p, size_);
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  FF_CHECK(m != MAP_FAILED, "cannot memory-map '%s': %s", p, std::strerror(errno));
  map_ = static_cast<const char*>(m);
  try {
    uint64_t hlen = 0;
    std::memcpy(&hlen, map_, 8);
    FF_CHECK(hlen <= size_ - 8, "'%s': header length %llu runs past the end of the file (%zu bytes); the file is "
             "truncated or not safetensors", p, (unsigned long long)hlen, size_);
    FF_CHECK(hlen <= kMaxHeaderBytes, "'%s': header length %llu exceeds the 100 MB limit", p, (unsigned long long)hlen);
    data_start_ = 8 + hlen;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(map_ + 8, map_ + data_start_);
    } catch (const std::exception& e) {
      FF_FAIL("'%s': the header is not valid JSON: %s", p, e.what());
    }
    FF_CHECK(header.is_object(), "'%s': the header must be a JSON object", p);
    const size_t data_size = size_ - data_start_;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        FF_CHECK(it->is_object(), "'%s': __metadata__ must be an object of strings", p);
        for (auto m2 = it->begin(); m2 != it->end(); ++m2) {
          FF_CHECK(m2->is_string(), "'%s': __metadata__.%s must be a string", p, m2.key().c_str());
          metadata_[m2.key()] = m2->get<std::string>();
        }
        continue;
      }
      const auto& t = *it;
      const char* name = it.key().c_str();
      FF_CHECK(t.is_object() && t.contains("dtype") && t.contains("shape") && t.contains("data_offsets"),
               "'%s': tensor '%s' lacks dtype, shape or data_offsets", p, name);
      Info info;
      FF_CHECK(t["dtype"].is_string() && parse_dtype(t["dtype"].get<std::string>(), info.dtype),
               "'%s': tensor '%s' has dtype %s; fivefold reads F32, BF16 and F16", p, name, t["dtype"].dump().c_str());
      FF_CHECK(t["shape"].is_array() && t["shape"].size() <= 8, "'%s': tensor '%s' shape is not a list of <= 8 dims",
               p, name);
      size_t n = 1;
      for (const auto& d : t["shape"]) {
        FF_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0 && d.get<int64_t>() < (int64_t(1) << 40),
                 "'%s': tensor '%s' has a bad dimension %s", p, name, d.dump().c_str());
        const size_t dim = static_cast<size_t>(d.get<int64_t>());
        FF_CHECK(dim == 0 || n <= data_size / dim, "'%s': tensor '%s' shape %s needs more bytes than the file holds",
                 p, name, t["shape"].dump().c_str());
        info.shape.push_back(d.get<int64_t>());
        n *= dim;
      }
      const auto& off = t["data_offsets"];
      FF_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
               "'%s': tensor '%s' data_offsets must be two non-negative integers", p, name);
      info.begin = off[0].get<size_t>();
      info.end = off[1].get<size_t>();
      FF_CHECK(info.begin <= info.end && info.end <= data_size,
               "'%s': tensor '%s' data_offsets [%zu, %zu] lie outside the %zu data bytes (truncated file?)", p, name,
               info.begin, info.end, data_size);
      FF_CHECK(info.end - info.begin == n * st_dtype_size(info.dtype),
               "'%s': tensor '%s' has %zu bytes but its shape %s of %s needs %zu", p, name, info.end - info.begin,
               shape_str(info.shape).c_str(), st_dtype_name(info.dtype), n * st_dtype_size(info.dtype));
      tensors_[it.key()] = info;
    }
    // No overlaps and no holes: sorted by offset, each tensor starts where the previous ended.
    std::vector<std::pair<size_t, std::string>> order;
    for (const auto& [k, v] : tensors_)
      if (v.end > v.begin) order.emplace_back(v.begin, k);
    std::sort(order.begin(), order.end());
    size_t at = 0;
    for (const auto& [begin, k] : order) {
      FF_CHECK(begin == at, "'%s': tensor '%s' starts at data byte %zu but the previous tensor ends at %zu "
               "(overlapping or missing data)", p, k.c_str(), begin, at);
      at = tensors_[k].end;
    }
    FF_CHECK(at == data_size, "'%s': the tensors cover %zu of the %zu data bytes (trailing bytes or a lying header)",
             p, at, data_size);
  } catch (...) {
    ::munmap(const_cast<char*>(map_), size_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<char*>(map_), size_);
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept
    : path_(std::move(o.path_)), map_(o.map_), size_(o.size_), data_start_(o.data_start_),
      tensors_(std::move(o.tensors_)), metadata_(std::move(o.metadata_)) {
  o.map_ = nullptr;
  o.size_ = 0;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : tensors_) out.push_back(k);
  return out;
}

const SafetensorsFile::Info& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  FF_CHECK(it != tensors_.end(), "'%s': tensor '%s' is missing", path_.c_str(), name.c_str());
  return it->second;
}

const void* SafetensorsFile::raw(const std::string& name) const { return map_ + data_start_ + info(name).begin; }

void SafetensorsFile::read(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
  const Info& in = info(name);
  FF_CHECK(in.shape == shape, "'%s': tensor '%s' has shape %s, the model expects %s", path_.c_str(), name.c_str(),
           shape_str(in.shape).c_str(), shape_str(shape).c_str());
  const char* src = map_ + data_start_ + in.begin;
  const size_t n = numel_of(shape);
  if (in.dtype == StDtype::F32) {
    std::memcpy(out, src, n * 4);
    return;
  }
  const bool bf16 = in.dtype == StDtype::BF16;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    out[i] = bf16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

void SafetensorsFile::read_f32_exact(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
  const Info& in = info(name);
  FF_CHECK(in.dtype == StDtype::F32, "'%s': tensor '%s' has dtype %s; fivefold training state is stored as F32",
           path_.c_str(), name.c_str(), st_dtype_name(in.dtype));
  read(name, shape, out);
}

HostTensor SafetensorsFile::read_any(const std::string& name) const {
  HostTensor t;
  t.shape = info(name).shape;
  t.data.resize(numel_of(t.shape));
  read(name, t.shape, t.data.data());
  return t;
}

}  // namespace ff
