#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"

namespace ff {

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& t : tensors) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + 4 * n}}};
    offset += 4 * n;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data to 8 bytes
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  FF_CHECK(fd >= 0, "cannot write '%s': %s", tmp.c_str(), std::strerror(errno));
  auto put = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      ssize_t w = ::write(fd, c, n);
      if (w < 0) {
        ::close(fd);
        FF_FAIL("writing '%s' failed: %s", tmp.c_str(), std::strerror(errno));
      }
      c += w;
      n -= static_cast<size_t>(w);
    }
  };
  uint64_t len = h.size();
  put(&len, 8);
  put(h.data(), h.size());
  for (const auto& t : tensors) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    put(t.data, 4 * n);
  }
  FF_CHECK(::fsync(fd) == 0, "fsync of '%s' failed: %s", tmp.c_str(), std::strerror(errno));
  ::close(fd);
  FF_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '%s' to '%s': %s", tmp.c_str(), path.c_str(),
           std::strerror(errno));
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  FF_CHECK(f.good(), "cannot open safetensors file '%s'", path.c_str());
  const auto size = static_cast<size_t>(f.tellg());
  f.seekg(0);
  bytes_.resize(size);
  f.read(bytes_.data(), static_cast<std::streamsize>(size));
  FF_CHECK(size >= 8, "'%s': %zu bytes is too short for a safetensors file (truncated?)", path.c_str(), size);
  uint64_t hlen = 0;
  std::memcpy(&hlen, bytes_.data(), 8);
  FF_CHECK(hlen <= size - 8, "'%s': header length %llu runs past the end of the file (%zu bytes); the file is "
           "truncated or not safetensors", path.c_str(), (unsigned long long)hlen, size);
  data_start_ = 8 + hlen;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes_.begin() + 8, bytes_.begin() + static_cast<std::ptrdiff_t>(data_start_));
  } catch (const std::exception& e) {
    FF_FAIL("'%s': the header is not valid JSON: %s", path.c_str(), e.what());
  }
  FF_CHECK(header.is_object(), "'%s': the header must be a JSON object", path.c_str());
  const size_t data_size = size - data_start_;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      FF_CHECK(it->is_object(), "'%s': __metadata__ must be an object of strings", path.c_str());
      for (auto m = it->begin(); m != it->end(); ++m) {
        FF_CHECK(m->is_string(), "'%s': __metadata__.%s must be a string", path.c_str(), m.key().c_str());
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const auto& t = *it;
    const char* name = it.key().c_str();
    FF_CHECK(t.is_object() && t.contains("dtype") && t.contains("shape") && t.contains("data_offsets"),
             "'%s': tensor '%s' lacks dtype, shape or data_offsets", path.c_str(), name);
    FF_CHECK(t["dtype"] == "F32", "'%s': tensor '%s' has dtype %s; this reader takes F32", path.c_str(), name,
             t["dtype"].dump().c_str());
    Info info;
    size_t n = 1;
    FF_CHECK(t["shape"].is_array(), "'%s': tensor '%s' shape is not a list", path.c_str(), name);
    for (const auto& d : t["shape"]) {
      FF_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0 && d.get<int64_t>() < (int64_t(1) << 40),
               "'%s': tensor '%s' has a bad dimension %s", path.c_str(), name, d.dump().c_str());
      info.shape.push_back(d.get<int64_t>());
      n *= static_cast<size_t>(d.get<int64_t>());
    }
    const auto& off = t["data_offsets"];
    FF_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
             "'%s': tensor '%s' data_offsets must be two non-negative integers", path.c_str(), name);
    info.begin = off[0].get<size_t>();
    info.end = off[1].get<size_t>();
    FF_CHECK(info.begin <= info.end && info.end <= data_size,
             "'%s': tensor '%s' data_offsets [%zu, %zu] lie outside the %zu data bytes (truncated file?)", path.c_str(),
             name, info.begin, info.end, data_size);
    FF_CHECK(info.end - info.begin == 4 * n, "'%s': tensor '%s' has %zu bytes but its shape needs %zu", path.c_str(),
             name, info.end - info.begin, 4 * n);
    tensors_[it.key()] = info;
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : tensors_) out.push_back(k);
  return out;
}

void SafetensorsFile::read(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
  auto it = tensors_.find(name);
  FF_CHECK(it != tensors_.end(), "'%s': tensor '%s' is missing", path_.c_str(), name.c_str());
  FF_CHECK(it->second.shape == shape, "'%s': tensor '%s' has shape %s, the model expects %s", path_.c_str(),
           name.c_str(), Shape::from(it->second.shape).str().c_str(), Shape::from(shape).str().c_str());
  std::memcpy(out, bytes_.data() + data_start_ + it->second.begin, it->second.end - it->second.begin);
}

}  // namespace ff
