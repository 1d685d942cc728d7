// Megatron indexed datasets: PREFIX.bin (token arrays) + PREFIX.idx (index), byte-compatible with
// Megatron-LM's MMapIndexedDataset. All integers little-endian. PREFIX.idx:
//   offset 0   magic, 9 bytes "MMIDIDX\0\0"
//          9   version, u64 = 1
//         17   dtype code, u8: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16
//         18   S = sequence count, u64
//         26   D = document-index length, u64 (= documents + 1)
//         34   sequence lengths, int32[S] (in elements)
//   34 + 4S    sequence pointers, int64[S] (byte offsets into .bin)
//   34 + 12S   document index, int64[D]: document d is sequences [doc[d], doc[d+1]); doc[0] = 0, doc[D-1] = S
//   (34 + 12S + 8D: multimodal files add int8[S] sequence modes; accepted and ignored)
// PREFIX.bin: the sequences' tokens, concatenated, in the dtype above.
//
// The reader memory-maps both files and validates everything before use (magic, version, dtype,
// counts against the file size, lengths, pointers inside .bin, a monotone document index); every
// error names the file and the problem. Arrays in .idx are not aligned (they start at byte 34),
// so they are read through memcpy accessors, never through casted pointers.
#pragma once
#include <cstdint>
#include <fstream>
#include <span>
#include <string>
#include <vector>

namespace ff {

enum class TokenDType : uint8_t { u8 = 1, i8 = 2, i16 = 3, i32 = 4, i64 = 5, f64 = 6, f32 = 7, u16 = 8 };
int64_t dtype_size(TokenDType t);
const char* dtype_name(TokenDType t);
// Megatron's choice: uint16 when the vocabulary has fewer than 65,500 entries, else int32.
TokenDType dtype_for_vocab(int64_t vocab_size);

constexpr char kIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
constexpr int64_t kIndexHeaderBytes = 34;

// Streams documents into PREFIX.bin.tmp / PREFIX.idx.tmp and renames both into place on
// finish(), so a PREFIX.idx that exists is complete. Holds 12 bytes per sequence in memory.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, TokenDType dtype);
  ~IndexedDatasetWriter();  // without finish(): removes the temporary files
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // One sequence; throws if a token does not fit the dtype.
  void add_sequence(std::span<const int32_t> tokens);
  void end_document();  // closes the document made of the sequences added since the last one
  // add_sequence + end_document.
  void add_document(std::span<const int32_t> tokens) { add_sequence(tokens); end_document(); }
  void finish();
  int64_t sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t tokens() const { return tokens_; }

 private:
  std::string prefix_;
  TokenDType dtype_;
  std::ofstream bin_;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> pointers_, doc_index_{0};
  std::vector<char> buffer_;
  int64_t tokens_ = 0, bin_bytes_ = 0;
  bool finished_ = false;
};

class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  int64_t num_sequences() const { return S_; }
  int64_t num_documents() const { return D_ - 1; }
  int64_t num_tokens() const { return tokens_; }
  int32_t sequence_length(int64_t i) const;
  int64_t sequence_pointer(int64_t i) const;
  int64_t document_index(int64_t d) const;  // d in [0, D]: first sequence of document d
  // Copies tokens [offset, offset + n) of sequence i into out (as int32).
  void read(int64_t i, int64_t offset, int64_t n, int32_t* out) const;
  std::vector<int32_t> sequence(int64_t i) const;

 private:
  std::string prefix_;
  const unsigned char* idx_ = nullptr;
  const unsigned char* bin_ = nullptr;
  int64_t idx_bytes_ = 0, bin_bytes_ = 0;
  TokenDType dtype_ = TokenDType::u16;
  int64_t S_ = 0, D_ = 0, tokens_ = 0;
};

}  // namespace ff
