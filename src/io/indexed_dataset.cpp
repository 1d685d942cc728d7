#include "io/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "core/check.h"

namespace ff {

int64_t dtype_size(TokenDType t) {
  switch (t) {
    case TokenDType::u8: case TokenDType::i8: return 1;
    case TokenDType::i16: case TokenDType::u16: return 2;
    case TokenDType::i32: case TokenDType::f32: return 4;
    case TokenDType::i64: case TokenDType::f64: return 8;
  }
  return 0;
}

const char* dtype_name(TokenDType t) {
  switch (t) {
    case TokenDType::u8: return "uint8";
    case TokenDType::i8: return "int8";
    case TokenDType::i16: return "int16";
    case TokenDType::i32: return "int32";
    case TokenDType::i64: return "int64";
    case TokenDType::f64: return "float64";
    case TokenDType::f32: return "float32";
    case TokenDType::u16: return "uint16";
  }
  return "?";
}

TokenDType dtype_for_vocab(int64_t vocab_size) { return vocab_size < 65500 ? TokenDType::u16 : TokenDType::i32; }

namespace {

template <class T>
void put(std::vector<char>& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}

template <class T>
T get(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// The range of token values a dtype can hold (integers only).
bool fits(TokenDType t, int32_t v) {
  switch (t) {
    case TokenDType::u8: return v >= 0 && v <= 255;
    case TokenDType::i8: return v >= -128 && v <= 127;
    case TokenDType::i16: return v >= -32768 && v <= 32767;
    case TokenDType::u16: return v >= 0 && v <= 65535;
    case TokenDType::i32: case TokenDType::i64: return true;
    default: return false;
  }
}

// Maps a whole file read-only; returns nullptr for an empty file.
const unsigned char* map_file(const std::string& path, int64_t& bytes) {
  int fd = ::open(path.c_str(), O_RDONLY);
  FF_CHECK(fd >= 0, "'%s': cannot open: %s", path.c_str(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    FF_FAIL("'%s': cannot stat: %s", path.c_str(), std::strerror(errno));
  }
  bytes = static_cast<int64_t>(st.st_size);
  if (bytes == 0) {
    ::close(fd);
    return nullptr;
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  FF_CHECK(p != MAP_FAILED, "'%s': cannot mmap %lld bytes: %s", path.c_str(), (long long)bytes, std::strerror(errno));
  return static_cast<const unsigned char*>(p);
}

}  // namespace

// ---- writer ----

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, TokenDType dtype) : prefix_(prefix), dtype_(dtype) {
  FF_CHECK(dtype == TokenDType::u8 || dtype == TokenDType::i8 || dtype == TokenDType::i16 || dtype == TokenDType::i32 ||
               dtype == TokenDType::i64 || dtype == TokenDType::u16,
           "indexed dataset '%s': token dtype %s is not an integer type", prefix.c_str(), dtype_name(dtype));
  const auto parent = std::filesystem::path(prefix).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  bin_.open(prefix + ".bin.tmp", std::ios::binary | std::ios::trunc);
  FF_CHECK(bin_.good(), "'%s.bin.tmp': cannot create the file", prefix.c_str());
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (finished_) return;
  bin_.close();
  std::error_code ec;
  std::filesystem::remove(prefix_ + ".bin.tmp", ec);
  std::filesystem::remove(prefix_ + ".idx.tmp", ec);
}

void IndexedDatasetWriter::add_sequence(std::span<const int32_t> tokens) {
  FF_CHECK(!finished_, "indexed dataset '%s': add_sequence after finish", prefix_.c_str());
  FF_CHECK(tokens.size() <= static_cast<size_t>(INT32_MAX), "indexed dataset '%s': a sequence of %zu tokens exceeds "
           "the format's int32 length", prefix_.c_str(), tokens.size());
  const int64_t es = dtype_size(dtype_);
  buffer_.resize(tokens.size() * static_cast<size_t>(es));
  char* out = buffer_.data();
  for (size_t i = 0; i < tokens.size(); ++i, out += es) {
    const int32_t v = tokens[i];
    FF_CHECK(fits(dtype_, v), "indexed dataset '%s': token %d does not fit the file's dtype %s", prefix_.c_str(), v,
             dtype_name(dtype_));
    switch (dtype_) {
      case TokenDType::u8: case TokenDType::i8: *out = static_cast<char>(v); break;
      case TokenDType::i16: case TokenDType::u16: { uint16_t x = static_cast<uint16_t>(v); std::memcpy(out, &x, 2); break; }
      case TokenDType::i32: std::memcpy(out, &v, 4); break;
      default: { int64_t x = v; std::memcpy(out, &x, 8); }
    }
  }
  bin_.write(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
  FF_CHECK(bin_.good(), "'%s.bin.tmp': write failed (disk full?)", prefix_.c_str());
  lengths_.push_back(static_cast<int32_t>(tokens.size()));
  pointers_.push_back(bin_bytes_);
  bin_bytes_ += static_cast<int64_t>(buffer_.size());
  tokens_ += static_cast<int64_t>(tokens.size());
}

void IndexedDatasetWriter::end_document() { doc_index_.push_back(static_cast<int64_t>(lengths_.size())); }

void IndexedDatasetWriter::finish() {
  FF_CHECK(!finished_, "indexed dataset '%s': finish called twice", prefix_.c_str());
  FF_CHECK(doc_index_.back() == static_cast<int64_t>(lengths_.size()),
           "indexed dataset '%s': sequences added after the last end_document()", prefix_.c_str());
  bin_.close();
  FF_CHECK(!bin_.fail(), "'%s.bin.tmp': write failed (disk full?)", prefix_.c_str());
  std::vector<char> idx;
  idx.reserve(static_cast<size_t>(kIndexHeaderBytes) + 12 * lengths_.size() + 8 * doc_index_.size());
  idx.insert(idx.end(), kIndexMagic, kIndexMagic + 9);
  put<uint64_t>(idx, 1);
  put<uint8_t>(idx, static_cast<uint8_t>(dtype_));
  put<uint64_t>(idx, lengths_.size());
  put<uint64_t>(idx, doc_index_.size());
  for (int32_t l : lengths_) put(idx, l);
  for (int64_t p : pointers_) put(idx, p);
  for (int64_t d : doc_index_) put(idx, d);
  {
    std::ofstream f(prefix_ + ".idx.tmp", std::ios::binary | std::ios::trunc);
    f.write(idx.data(), static_cast<std::streamsize>(idx.size()));
    f.close();
    FF_CHECK(!f.fail(), "'%s.idx.tmp': write failed", prefix_.c_str());
  }
  std::filesystem::rename(prefix_ + ".bin.tmp", prefix_ + ".bin");
  std::filesystem::rename(prefix_ + ".idx.tmp", prefix_ + ".idx");
  finished_ = true;
}

// ---- reader ----

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string ip = prefix + ".idx", bp = prefix + ".bin";
  FF_CHECK(std::filesystem::exists(ip), "'%s': no such file (an indexed dataset is PREFIX.idx + PREFIX.bin; make one "
           "with fivefold preprocess)", ip.c_str());
  FF_CHECK(std::filesystem::exists(bp), "'%s': no such file (the token data beside %s)", bp.c_str(), ip.c_str());
  const char* ipc = ip.c_str();
  try {
    idx_ = map_file(ip, idx_bytes_);
    bin_ = map_file(bp, bin_bytes_);
    FF_CHECK(idx_bytes_ >= kIndexHeaderBytes, "'%s': truncated: %lld bytes, shorter than the 34-byte header", ipc,
             (long long)idx_bytes_);
    FF_CHECK(std::memcmp(idx_, kIndexMagic, 9) == 0, "'%s': wrong magic (expected \"MMIDIDX\\0\\0\"): not a Megatron "
             "indexed dataset index", ipc);
    const auto version = get<uint64_t>(idx_ + 9);
    FF_CHECK(version == 1, "'%s': version %llu is not supported (expected 1)", ipc, (unsigned long long)version);
    const uint8_t code = idx_[17];
    FF_CHECK(code >= 1 && code <= 8, "'%s': dtype code %u is not one of 1..8", ipc, code);
    dtype_ = static_cast<TokenDType>(code);
    FF_CHECK(dtype_ != TokenDType::f32 && dtype_ != TokenDType::f64, "'%s': dtype %s holds no token ids", ipc,
             dtype_name(dtype_));
    const auto S = get<uint64_t>(idx_ + 18), D = get<uint64_t>(idx_ + 26);
    const auto body = static_cast<uint64_t>(idx_bytes_ - kIndexHeaderBytes);
    FF_CHECK(S <= body / 12 && D <= body / 8, "'%s': counts S = %llu sequences, D = %llu do not fit a file of %lld bytes "
             "(truncated or corrupted)", ipc, (unsigned long long)S, (unsigned long long)D, (long long)idx_bytes_);
    const uint64_t need = 12 * S + 8 * D;
    FF_CHECK(body == need || body == need + S, "'%s': size %lld bytes does not match S = %llu sequences and D = %llu "
             "document entries (expected %llu bytes): truncated or corrupted", ipc, (long long)idx_bytes_,
             (unsigned long long)S, (unsigned long long)D, (unsigned long long)(kIndexHeaderBytes + need));
    FF_CHECK(D >= 1, "'%s': the document index is empty (it needs at least the leading 0)", ipc);
    S_ = static_cast<int64_t>(S);
    D_ = static_cast<int64_t>(D);
    const int64_t es = dtype_size(dtype_);
    for (int64_t i = 0; i < S_; ++i) {
      const int32_t len = sequence_length(i);
      const int64_t ptr = sequence_pointer(i);
      FF_CHECK(len >= 0, "'%s': sequence %lld has negative length %d", ipc, (long long)i, len);
      FF_CHECK(ptr >= 0 && ptr % es == 0 && ptr <= bin_bytes_ && len <= (bin_bytes_ - ptr) / es,
               "'%s': sequence %lld (pointer %lld, %d tokens of %lld bytes) lies outside '%s' of %lld bytes", ipc,
               (long long)i, (long long)ptr, len, (long long)es, bp.c_str(), (long long)bin_bytes_);
      // Sequences follow each other in the .bin as the writer lays them out, none inside another
      // (an index whose pointers overlap reads the same tokens twice, or garbage).
      if (i > 0) {
        const int64_t prev_end = sequence_pointer(i - 1) + static_cast<int64_t>(sequence_length(i - 1)) * es;
        FF_CHECK(ptr >= prev_end, "'%s': sequence %lld starts at byte %lld, inside sequence %lld (which ends at %lld): "
                 "the pointers overlap; the index is corrupted", ipc, (long long)i, (long long)ptr, (long long)(i - 1),
                 (long long)prev_end);
      }
      tokens_ += len;
    }
    FF_CHECK(document_index(0) == 0, "'%s': document index starts at %lld, not 0", ipc, (long long)document_index(0));
    for (int64_t d = 1; d < D_; ++d)
      FF_CHECK(document_index(d) >= document_index(d - 1) && document_index(d) <= S_,
               "'%s': document index entry %lld = %lld is out of order or beyond the %lld sequences", ipc, (long long)d,
               (long long)document_index(d), (long long)S_);
    FF_CHECK(document_index(D_ - 1) == S_, "'%s': the document index ends at %lld, not at the sequence count %lld", ipc,
             (long long)document_index(D_ - 1), (long long)S_);
  } catch (...) {
    if (idx_) ::munmap(const_cast<unsigned char*>(idx_), static_cast<size_t>(idx_bytes_));
    if (bin_) ::munmap(const_cast<unsigned char*>(bin_), static_cast<size_t>(bin_bytes_));
    throw;
  }
}

IndexedDataset::~IndexedDataset() {
  if (idx_) ::munmap(const_cast<unsigned char*>(idx_), static_cast<size_t>(idx_bytes_));
  if (bin_) ::munmap(const_cast<unsigned char*>(bin_), static_cast<size_t>(bin_bytes_));
}

int32_t IndexedDataset::sequence_length(int64_t i) const { return get<int32_t>(idx_ + kIndexHeaderBytes + 4 * i); }
int64_t IndexedDataset::sequence_pointer(int64_t i) const {
  return get<int64_t>(idx_ + kIndexHeaderBytes + 4 * S_ + 8 * i);
}
int64_t IndexedDataset::document_index(int64_t d) const {
  return get<int64_t>(idx_ + kIndexHeaderBytes + 12 * S_ + 8 * d);
}

void IndexedDataset::read(int64_t i, int64_t offset, int64_t n, int32_t* out) const {
  FF_CHECK(i >= 0 && i < S_, "'%s.idx': sequence %lld out of range [0, %lld)", prefix_.c_str(), (long long)i, (long long)S_);
  FF_CHECK(offset >= 0 && n >= 0 && offset + n <= sequence_length(i), "'%s.idx': tokens [%lld, %lld) outside sequence %lld "
           "of %d tokens", prefix_.c_str(), (long long)offset, (long long)(offset + n), (long long)i, sequence_length(i));
  if (n == 0) return;
  const int64_t es = dtype_size(dtype_);
  const unsigned char* p = bin_ + sequence_pointer(i) + offset * es;
  switch (dtype_) {
    case TokenDType::u16: for (int64_t k = 0; k < n; ++k) out[k] = get<uint16_t>(p + 2 * k); break;
    case TokenDType::i32: std::memcpy(out, p, static_cast<size_t>(4 * n)); break;
    case TokenDType::u8: for (int64_t k = 0; k < n; ++k) out[k] = p[k]; break;
    case TokenDType::i8: for (int64_t k = 0; k < n; ++k) out[k] = static_cast<int8_t>(p[k]); break;
    case TokenDType::i16: for (int64_t k = 0; k < n; ++k) out[k] = get<int16_t>(p + 2 * k); break;
    case TokenDType::i64:
      for (int64_t k = 0; k < n; ++k) {
        const auto v = get<int64_t>(p + 8 * k);
        FF_CHECK(v >= INT32_MIN && v <= INT32_MAX, "'%s.bin': token %lld of sequence %lld does not fit int32",
                 prefix_.c_str(), (long long)v, (long long)i);
        out[k] = static_cast<int32_t>(v);
      }
      break;
    default: FF_FAIL("'%s.idx': dtype %s holds no token ids", prefix_.c_str(), dtype_name(dtype_));
  }
}

std::vector<int32_t> IndexedDataset::sequence(int64_t i) const {
  FF_CHECK(i >= 0 && i < S_, "'%s.idx': sequence %lld out of range [0, %lld)", prefix_.c_str(), (long long)i, (long long)S_);
  std::vector<int32_t> out(static_cast<size_t>(sequence_length(i)));
  read(i, 0, static_cast<int64_t>(out.size()), out.data());
  return out;
}

}  // namespace ff
