#include "io/gpt_dataset.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "core/hash.h"
#include "core/rng.h"

namespace ff {

std::array<DocRange, 3> split_documents(const std::string& split, int64_t num_documents, const std::string& what) {
  std::vector<double> r;
  std::stringstream ss(split);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t pos = 0;
    double x = -1;
    try {
      x = std::stod(item, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    FF_CHECK(pos > 0 && pos == item.size() && x >= 0 && std::isfinite(x), "%s = \"%s\": \"%s\" is not a non-negative "
             "number; give ratios like \"98,2,0\" (train, valid, test)", what.c_str(), split.c_str(), item.c_str());
    r.push_back(x);
  }
  FF_CHECK(!r.empty() && r.size() <= 3, "%s = \"%s\": give one to three ratios, like \"98,2,0\" (train, valid, test)",
           what.c_str(), split.c_str());
  r.resize(3, 0.0);
  const double sum = r[0] + r[1] + r[2];
  FF_CHECK(sum > 0, "%s = \"%s\": the ratios sum to 0", what.c_str(), split.c_str());
  std::array<DocRange, 3> out{};
  int64_t b = 0;
  double cum = 0;
  for (int k = 0; k < 3; ++k) {
    cum += r[static_cast<size_t>(k)] / sum;
    const int64_t e = k == 2 ? num_documents : std::min<int64_t>(num_documents, std::llround(cum * static_cast<double>(num_documents)));
    out[static_cast<size_t>(k)] = {b, std::max(b, e)};
    b = std::max(b, e);
  }
  return out;
}

// ---- npy ----

namespace {
std::string npy_header(int64_t n, int64_t cols) {
  std::string shape = cols > 1 ? strprintf("(%lld, %lld)", (long long)n, (long long)cols) : strprintf("(%lld,)", (long long)n);
  std::string h = "{'descr': '<i8', 'fortran_order': False, 'shape': " + shape + ", }";
  const size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h.push_back('\n');
  return h;
}
}  // namespace

void write_npy_i64(const std::string& path, const std::vector<int64_t>& v, int64_t cols) {
  const int64_t n = static_cast<int64_t>(v.size()) / cols;
  const std::string h = npy_header(n, cols);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  FF_CHECK(f.good(), "'%s': cannot create the file", path.c_str());
  const uint16_t hl = static_cast<uint16_t>(h.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&hl), 2);
  f.write(h.data(), static_cast<std::streamsize>(h.size()));
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(int64_t)));
  f.close();
  FF_CHECK(!f.fail(), "'%s': write failed", path.c_str());
}

bool read_npy_i64(const std::string& path, std::vector<int64_t>& v, int64_t cols) {
  std::ifstream f(path, std::ios::binary);
  if (!f.good()) return false;
  char pre[10];
  if (!f.read(pre, 10) || std::memcmp(pre, "\x93NUMPY\x01\x00", 8) != 0) return false;
  uint16_t hl;
  std::memcpy(&hl, pre + 8, 2);
  std::string h(hl, '\0');
  if (!f.read(h.data(), hl)) return false;
  const auto shape_at = h.find("'shape': (");
  if (shape_at == std::string::npos) return false;
  const long long n = std::atoll(h.c_str() + shape_at + 10);
  if (n < 0 || h != npy_header(n, cols)) return false;
  const auto data_begin = f.tellg();
  f.seekg(0, std::ios::end);
  if (f.tellg() - data_begin != static_cast<std::streamoff>(n * cols * 8)) return false;
  f.seekg(data_begin);
  v.resize(static_cast<size_t>(n * cols));
  return static_cast<bool>(f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 8)));
}

// ---- GptDataset ----

namespace {
int64_t mtime_ns(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

template <class T>
void shuffle(std::vector<T>& v, size_t begin, size_t end, Rng& rng) {
  for (size_t i = end; i > begin + 1; --i) std::swap(v[i - 1], v[begin + rng.below(i - begin)]);
}
}  // namespace

GptDataset::GptDataset(std::shared_ptr<const IndexedDataset> data, const GptDatasetOptions& o)
    : data_(std::move(data)), o_(o) {
  const std::string& p = data_->prefix();
  FF_CHECK(o_.seq_len >= 1 && o_.num_samples >= 1, "GPT dataset '%s': seq_len %lld and num_samples %lld must be >= 1",
           p.c_str(), (long long)o_.seq_len, (long long)o_.num_samples);
  FF_CHECK(o_.documents.begin >= 0 && o_.documents.begin <= o_.documents.end &&
               o_.documents.end <= data_->num_documents(),
           "GPT dataset '%s': document range [%lld, %lld) is outside its %lld documents", p.c_str(),
           (long long)o_.documents.begin, (long long)o_.documents.end, (long long)data_->num_documents());
  for (int64_t d = o_.documents.begin; d < o_.documents.end; ++d)
    for (int64_t s = data_->document_index(d); s < data_->document_index(d + 1); ++s)
      tokens_per_epoch_ += data_->sequence_length(s);
  const int64_t T = tokens_per_epoch_, L = o_.seq_len;
  FF_CHECK(T > L, "GPT dataset '%s': the %s split (documents [%lld, %lld)) has %lld tokens, fewer than seq_len + 1 = %lld; "
           "use more data or change the split ratios", p.c_str(), o_.split_name.c_str(), (long long)o_.documents.begin,
           (long long)o_.documents.end, (long long)T, (long long)(L + 1));
  // Fewest epochs E with (E * T - 1) / L >= num_samples.
  epochs_ = (o_.num_samples * L + 1 + T - 1) / T;
  nlohmann::json desc = {{"class", "fivefold.GptDataset"}, {"version", 1},
                         {"prefix", std::filesystem::absolute(p).lexically_normal().string()},
                         {"idx_bytes", std::filesystem::file_size(p + ".idx")},
                         {"bin_bytes", std::filesystem::file_size(p + ".bin")},
                         {"idx_mtime_ns", mtime_ns(p + ".idx")}, {"bin_mtime_ns", mtime_ns(p + ".bin")},
                         {"documents", {o_.documents.begin, o_.documents.end}}, {"split", o_.split_name},
                         {"seq_len", L}, {"seed", o_.seed}, {"epochs", epochs_}};
  const std::string description = desc.dump(2);
  const auto path = std::filesystem::path(p);
  cache_prefix_ = (path.parent_path() / "cache" /
                   strprintf("%s-%s-%016llx", path.filename().c_str(), o_.split_name.c_str(),
                             (unsigned long long)fnv1a(description))).string();
  if (o_.use_cache && load_cache(description)) {
    from_cache_ = true;
  } else {
    build();
    if (o_.use_cache) save_cache(description);
  }
  const int64_t N = size();
  epoch_starts_.assign(static_cast<size_t>(epochs_ + 1), N);
  for (int64_t e = 0; e <= epochs_; ++e)
    epoch_starts_[static_cast<size_t>(e)] = std::min(N, (e * T + L - 1) / L);
}

void GptDataset::build() {
  const int64_t T = tokens_per_epoch_, L = o_.seq_len, E = epochs_;
  const int64_t n_docs = o_.documents.end - o_.documents.begin;
  std::vector<int64_t> docs(static_cast<size_t>(n_docs));
  doc_index_.clear();
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t d = 0; d < n_docs; ++d) docs[static_cast<size_t>(d)] = o_.documents.begin + d;
    Rng rng(o_.seed, "gpt-documents", static_cast<uint64_t>(e));
    shuffle(docs, 0, docs.size(), rng);
    for (int64_t d : docs)
      for (int64_t s = data_->document_index(d); s < data_->document_index(d + 1); ++s) doc_index_.push_back(s);
  }
  const int64_t N = (E * T - 1) / L;
  sample_index_.resize(static_cast<size_t>(2 * N));
  int64_t k = 0, off = 0;
  for (int64_t i = 0; i < N; ++i) {
    sample_index_[static_cast<size_t>(2 * i)] = k;
    sample_index_[static_cast<size_t>(2 * i + 1)] = off;
    int64_t remaining = L;
    while (remaining > 0) {
      const int64_t left = data_->sequence_length(doc_index_[static_cast<size_t>(k)]) - off;
      if (left > remaining) {
        off += remaining;
        remaining = 0;
      } else {
        remaining -= left;
        ++k;
        off = 0;
      }
    }
  }
  shuffle_.resize(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) shuffle_[static_cast<size_t>(i)] = i;
  for (int64_t e = 0; e < E; ++e) {
    const auto b = static_cast<size_t>(std::min(N, (e * T + L - 1) / L));
    const auto en = static_cast<size_t>(std::min(N, ((e + 1) * T + L - 1) / L));
    Rng rng(o_.seed, "gpt-samples", static_cast<uint64_t>(e));
    shuffle(shuffle_, b, en, rng);
  }
}

bool GptDataset::load_cache(const std::string& description) {
  std::ifstream f(cache_prefix_ + "-description.json");
  if (!f.good()) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  if (ss.str() != description) return false;
  const int64_t N = (epochs_ * tokens_per_epoch_ - 1) / o_.seq_len;
  if (!read_npy_i64(cache_prefix_ + "-document_index.npy", doc_index_, 1) ||
      !read_npy_i64(cache_prefix_ + "-sample_index.npy", sample_index_, 2) ||
      !read_npy_i64(cache_prefix_ + "-shuffle_index.npy", shuffle_, 1) || static_cast<int64_t>(shuffle_.size()) != N ||
      static_cast<int64_t>(sample_index_.size()) != 2 * N)
    return false;
  // A cache is derived data, but it is still checked before use: every entry must be in range.
  const auto M = static_cast<int64_t>(doc_index_.size());
  for (int64_t s : doc_index_)
    if (s < 0 || s >= data_->num_sequences()) return false;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t k = sample_index_[static_cast<size_t>(2 * i)], off = sample_index_[static_cast<size_t>(2 * i + 1)];
    if (k < 0 || k >= M || off < 0 || off > data_->sequence_length(doc_index_[static_cast<size_t>(k)])) return false;
    if (shuffle_[static_cast<size_t>(i)] < 0 || shuffle_[static_cast<size_t>(i)] >= N) return false;
  }
  return true;
}

void GptDataset::save_cache(const std::string& description) const {
  const std::string tmp = strprintf(".tmp%d", static_cast<int>(::getpid()));
  try {
    std::filesystem::create_directories(std::filesystem::path(cache_prefix_).parent_path());
    write_npy_i64(cache_prefix_ + "-document_index.npy" + tmp, doc_index_, 1);
    write_npy_i64(cache_prefix_ + "-sample_index.npy" + tmp, sample_index_, 2);
    write_npy_i64(cache_prefix_ + "-shuffle_index.npy" + tmp, shuffle_, 1);
    std::ofstream(cache_prefix_ + "-description.json" + tmp) << description;
    for (const char* s : {"-document_index.npy", "-sample_index.npy", "-shuffle_index.npy", "-description.json"})
      std::filesystem::rename(cache_prefix_ + s + tmp, cache_prefix_ + s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "note: cannot cache the GPT dataset indices at %s (%s); continuing without the cache\n",
                 cache_prefix_.c_str(), e.what());
  }
}

void GptDataset::get_unshuffled(int64_t i, int32_t* out) const {
  FF_CHECK(i >= 0 && i < size(), "GPT dataset '%s': sample %lld out of range [0, %lld)", data_->prefix().c_str(),
           (long long)i, (long long)size());
  int64_t k = sample_index_[static_cast<size_t>(2 * i)], off = sample_index_[static_cast<size_t>(2 * i + 1)];
  int64_t need = o_.seq_len + 1;
  int32_t* o = out;
  while (need > 0) {
    FF_CHECK(k < static_cast<int64_t>(doc_index_.size()), "GPT dataset '%s': sample %lld runs past the document index",
             data_->prefix().c_str(), (long long)i);
    const int64_t seq = doc_index_[static_cast<size_t>(k)];
    const int64_t take = std::min<int64_t>(data_->sequence_length(seq) - off, need);
    data_->read(seq, off, take, o);
    for (int64_t t = 0; t < take; ++t)
      FF_CHECK(o[t] >= 0 && o[t] < o_.vocab_size, "'%s.bin': token %d (sequence %lld, offset %lld) is outside the "
               "vocabulary [0, %lld); was the data made with another tokenizer? (model.vocab_size)",
               data_->prefix().c_str(), o[t], (long long)seq, (long long)(off + t), (long long)o_.vocab_size);
    o += take;
    need -= take;
    off = 0;
    ++k;
  }
}

void GptDataset::get(int64_t i, int32_t* out) const {
  FF_CHECK(i >= 0 && i < size(), "GPT dataset '%s': sample %lld out of range [0, %lld)", data_->prefix().c_str(),
           (long long)i, (long long)size());
  get_unshuffled(shuffle_[static_cast<size_t>(i)], out);
}

// ---- BlendedDataset ----

namespace {
std::vector<double> normalised(const std::vector<double>& w) {
  double sum = 0;
  for (double x : w) {
    FF_CHECK(x >= 0 && std::isfinite(x), "blend weight %g: must be a non-negative number", x);
    sum += x;
  }
  FF_CHECK(!w.empty() && sum > 0, "blend weights: give at least one positive weight");
  std::vector<double> out(w);
  for (double& x : out) x /= sum;
  return out;
}
}  // namespace

std::vector<int64_t> BlendedDataset::samples_needed(const std::vector<double>& weights, int64_t size) {
  std::vector<int64_t> n;
  for (double w : normalised(weights)) n.push_back(w > 0 ? static_cast<int64_t>(std::ceil(w * static_cast<double>(size))) + 1 : 0);
  return n;
}

BlendedDataset::BlendedDataset(std::vector<std::unique_ptr<GptDataset>> parts, std::vector<double> weights, int64_t size)
    : parts_(std::move(parts)), weights_(normalised(weights)) {
  FF_CHECK(parts_.size() == weights_.size(), "blend: %zu datasets but %zu weights", parts_.size(), weights_.size());
  const size_t D = parts_.size();
  std::vector<int64_t> taken(D, 0);
  dataset_index_.resize(static_cast<size_t>(size));
  sample_index_.resize(static_cast<size_t>(size));
  for (int64_t i = 0; i < size; ++i) {
    size_t best = 0;
    double best_err = -1e300;
    for (size_t d = 0; d < D; ++d) {
      const double err = weights_[d] * static_cast<double>(i + 1) - static_cast<double>(taken[d]);
      if (err > best_err) { best_err = err; best = d; }
    }
    dataset_index_[static_cast<size_t>(i)] = static_cast<int32_t>(best);
    sample_index_[static_cast<size_t>(i)] = taken[best]++;
  }
  for (size_t d = 0; d < D; ++d)
    FF_CHECK(taken[d] <= parts_[d]->size(), "blend: dataset '%s' supplies %lld samples, %lld are needed",
             parts_[d]->data().prefix().c_str(), (long long)parts_[d]->size(), (long long)taken[d]);
}

void BlendedDataset::get(int64_t i, int32_t* out) const {
  FF_CHECK(i >= 0 && i < size(), "blended dataset: sample %lld out of range [0, %lld)", (long long)i, (long long)size());
  parts_[static_cast<size_t>(dataset_index_[static_cast<size_t>(i)])]->get(sample_index_[static_cast<size_t>(i)], out);
}

}  // namespace ff
