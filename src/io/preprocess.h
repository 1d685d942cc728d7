// `fivefold preprocess`: text -> Megatron indexed dataset (PREFIX.bin + PREFIX.idx), one sequence
// per document with EOD appended (as Megatron's preprocess_data.py with --append-eod).
//
// Input formats: jsonl (one JSON object per line, the document is the string under json_key;
// blank lines are skipped) or text (documents are paragraphs: runs of non-blank lines, each line
// keeping its '\n'; blank lines separate documents). auto picks jsonl for *.jsonl / *.json.
//
// Pipeline (bounded memory whatever the input size): the calling thread reads documents into
// chunks of about chunk_bytes; `workers` threads parse and tokenise chunks; a writer thread
// appends finished chunks to the files in input order. At most 2 * workers + 2 chunks exist at
// any time. With `progress`, a line with the input read, its rate and the ETA is rewritten on stderr
// while stderr is a terminal (nothing in logs), and a summary line ends the run.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace ff {

struct PreprocessConfig {
  std::string input;          // comma-separated files
  std::string output_prefix;  // writes OUTPUT_PREFIX.bin and OUTPUT_PREFIX.idx
  std::string format = "auto";
  std::string json_key = "text";
  TokenizerType tokenizer_type = TokenizerType::sentencepiece;
  std::string tokenizer_path;
  int64_t workers = 0;        // 0 = all hardware threads
  bool append_eod = true;
  bool skip_empty = false;    // drop empty documents instead of failing on them
  int64_t chunk_bytes = 1 << 20;
  bool progress = true;

  template <class V>
  void visit_fields(V& v) {
    v(input, "input", "comma-separated input files (JSONL or plain text)");
    v(output_prefix, "output_prefix", "writes OUTPUT_PREFIX.bin and OUTPUT_PREFIX.idx");
    v(format, "format", "auto | jsonl | text (text: documents are paragraphs separated by blank lines)");
    v(json_key, "json_key", "JSONL: the key holding each document's text");
    v(tokenizer_type, "tokenizer_type", "tokenizer kind");
    v(tokenizer_path, "tokenizer_path", "SentencePiece .model or Hugging Face tokenizer.json (not for byte)");
    v(workers, "workers", "tokenising threads; 0 = all hardware threads");
    v(append_eod, "append_eod", "append the tokenizer's EOD token to every document");
    v(skip_empty, "skip_empty", "drop empty documents (default: an empty document is an error)");
    v(chunk_bytes, "chunk_bytes", "bytes of input per work item");
    v(progress, "progress", "on a terminal, a progress line with an ETA while running; a summary line (documents/s, tokens/s) at the end");
  }
  std::vector<std::string> validate() const;
};

struct PreprocessStats {
  int64_t documents = 0, tokens = 0, input_bytes = 0, skipped_empty = 0;
  double seconds = 0;
};

// Throws ff::Error naming the file (and line) for unreadable input, malformed JSON, a missing or
// non-string key, an empty document (unless skip_empty) and input with no documents at all; the
// output files are then not created.
PreprocessStats preprocess(const PreprocessConfig& c, const Tokenizer& tok);

}  // namespace ff
