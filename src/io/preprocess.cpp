#include "io/preprocess.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/check.h"
#include "io/indexed_dataset.h"
#include "io/progress.h"

namespace ff {

std::vector<std::string> PreprocessConfig::validate() const {
  std::vector<std::string> e;
  if (input.empty()) e.push_back("--input is empty: give the JSONL or text file(s) to preprocess");
  if (output_prefix.empty()) e.push_back("--output_prefix is empty: give the path of the dataset without .bin/.idx");
  if (format != "auto" && format != "jsonl" && format != "text")
    e.push_back("--format " + format + ": must be auto, jsonl or text");
  if (json_key.empty()) e.push_back("--json_key is empty");
  if (tokenizer_type != TokenizerType::byte && tokenizer_path.empty())
    e.push_back("--tokenizer_path is empty: give the tokenizer file (or --tokenizer_type byte)");
  if (workers < 0) e.push_back(strprintf("--workers %lld: must be >= 0", (long long)workers));
  if (chunk_bytes < 1) e.push_back(strprintf("--chunk_bytes %lld: must be >= 1", (long long)chunk_bytes));
  return e;
}

namespace {

using Clock = std::chrono::steady_clock;

struct Chunk {
  int64_t index = 0;
  const std::string* file = nullptr;
  bool jsonl = false;
  std::vector<std::string> docs;
  std::vector<int64_t> lines;  // first input line of each document (1-based)
  int64_t bytes = 0;
};

struct Done {
  std::vector<int32_t> tokens, lengths;
  int64_t skipped = 0, bytes = 0;
  std::string error;
};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool blank(const std::string& line) { return line.find_first_not_of(" \t\r") == std::string::npos; }

Done tokenize_chunk(const Chunk& ch, const PreprocessConfig& c, const Tokenizer& tok) {
  Done d;
  d.bytes = ch.bytes;
  try {
    for (size_t i = 0; i < ch.docs.size(); ++i) {
      std::string text;
      const std::string* src = &ch.docs[i];
      if (ch.jsonl) {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(ch.docs[i]);
        } catch (const std::exception& e) {
          FF_FAIL("%s:%lld: not valid JSON: %s", ch.file->c_str(), (long long)ch.lines[i], e.what());
        }
        FF_CHECK(j.is_object() && j.contains(c.json_key), "%s:%lld: no \"%s\" key in this JSON line (set --json_key)",
                 ch.file->c_str(), (long long)ch.lines[i], c.json_key.c_str());
        FF_CHECK(j[c.json_key].is_string(), "%s:%lld: \"%s\" is not a string", ch.file->c_str(), (long long)ch.lines[i],
                 c.json_key.c_str());
        text = j[c.json_key].get<std::string>();
        src = &text;
      }
      if (src->empty()) {
        FF_CHECK(c.skip_empty, "%s:%lld: empty document (pass --skip_empty true to drop empty documents)",
                 ch.file->c_str(), (long long)ch.lines[i]);
        ++d.skipped;
        continue;
      }
      const auto before = d.tokens.size();
      auto ids = tok.encode(*src);
      d.tokens.insert(d.tokens.end(), ids.begin(), ids.end());
      if (c.append_eod) d.tokens.push_back(tok.eod());
      d.lengths.push_back(static_cast<int32_t>(d.tokens.size() - before));
    }
  } catch (const std::exception& e) {
    d.error = e.what();
  }
  return d;
}

}  // namespace

PreprocessStats preprocess(const PreprocessConfig& c, const Tokenizer& tok) {
  auto errors = c.validate();
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    FF_FAIL("preprocess:%s", all.c_str());
  }
  FF_CHECK(!c.append_eod || tok.eod() >= 0, "preprocess: the tokenizer (%s) has no EOD token; pass --append_eod false",
           tok.describe().c_str());
  const auto files = split_commas(c.input);
  for (const auto& f : files) FF_CHECK(std::ifstream(f).good(), "preprocess --input: cannot open '%s'", f.c_str());
  const int workers = c.workers > 0 ? static_cast<int>(c.workers) : std::max(1u, std::thread::hardware_concurrency());
  const int64_t cap = 2 * workers + 2;
  const int64_t V = tok.vocab_size();

  std::mutex mu;
  std::condition_variable cv;
  std::deque<Chunk> queue;
  std::map<int64_t, Done> done;
  int64_t produced = 0, written = 0;
  bool input_done = false, abort = false;
  std::string error;
  PreprocessStats stats;
  auto t0 = Clock::now();
  IndexedDatasetWriter writer(c.output_prefix, dtype_for_vocab(V));

  auto fail = [&](const std::string& msg) {
    std::lock_guard<std::mutex> lk(mu);
    if (error.empty()) error = msg;
    abort = true;
    cv.notify_all();
  };

  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w)
    pool.emplace_back([&] {
      for (;;) {
        Chunk ch;
        {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [&] { return abort || !queue.empty() || input_done; });
          if (abort || queue.empty()) return;
          ch = std::move(queue.front());
          queue.pop_front();
        }
        Done d = tokenize_chunk(ch, c, tok);
        std::lock_guard<std::mutex> lk(mu);
        done.emplace(ch.index, std::move(d));
        cv.notify_all();
      }
    });

  int64_t input_total = 0;
  for (const auto& f : files) {
    std::error_code ec;
    const auto n = std::filesystem::file_size(f, ec);
    if (!ec) input_total += static_cast<int64_t>(n);
  }
  Progress shown("preprocess", input_total, ProgressUnit::bytes, "", printing(c.progress && stderr_is_terminal()));
  std::thread out([&] {
    for (;;) {
      Done d;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return abort || done.count(written) || (input_done && written == produced); });
        if (abort || !done.count(written)) return;
        d = std::move(done[written]);
        done.erase(written);
      }
      if (!d.error.empty()) return fail(d.error);
      try {
        size_t at = 0;
        for (int32_t len : d.lengths) {
          writer.add_document(std::span<const int32_t>(d.tokens.data() + at, static_cast<size_t>(len)));
          at += static_cast<size_t>(len);
        }
      } catch (const std::exception& e) {
        return fail(e.what());
      }
      stats.documents += static_cast<int64_t>(d.lengths.size());
      stats.tokens += static_cast<int64_t>(d.tokens.size());
      stats.skipped_empty += d.skipped;
      stats.input_bytes += d.bytes;
      shown.advance(d.bytes);
      std::lock_guard<std::mutex> lk(mu);
      ++written;
      cv.notify_all();
    }
  });

  // Reader: this thread.
  auto submit = [&](Chunk& ch) {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return abort || produced - written < cap; });
    if (abort) return false;
    ch.index = produced++;
    queue.push_back(std::move(ch));
    cv.notify_all();
    ch = Chunk{};
    return true;
  };
  bool ok = true;
  for (size_t fi = 0; fi < files.size() && ok; ++fi) {
    const std::string& file = files[fi];
    const bool jsonl = c.format == "jsonl" || (c.format == "auto" && (ends_with(file, ".jsonl") || ends_with(file, ".json")));
    std::ifstream in(file, std::ios::binary);
    Chunk ch;
    ch.file = &file;
    ch.jsonl = jsonl;
    std::string line, para;
    int64_t line_no = 0, para_line = 0;
    auto add_doc = [&](std::string&& doc, int64_t at) {
      ch.bytes += static_cast<int64_t>(doc.size());
      ch.docs.push_back(std::move(doc));
      ch.lines.push_back(at);
      if (ch.bytes >= c.chunk_bytes) {
        ok = submit(ch);
        ch.file = &file;
        ch.jsonl = jsonl;
      }
    };
    while (ok && std::getline(in, line)) {
      ++line_no;
      if (jsonl) {
        if (!blank(line)) add_doc(std::move(line), line_no);
      } else if (blank(line)) {
        if (!para.empty()) add_doc(std::move(para), para_line);
        para.clear();
      } else {
        if (para.empty()) para_line = line_no;
        para += line;
        para += '\n';
      }
    }
    if (ok && !para.empty()) add_doc(std::move(para), para_line);
    if (ok && in.bad()) {
      fail(strprintf("'%s': read error at line %lld", file.c_str(), (long long)line_no));
      ok = false;
    }
    if (ok && !ch.docs.empty()) ok = submit(ch);
  }
  {
    std::lock_guard<std::mutex> lk(mu);
    input_done = true;
    cv.notify_all();
  }
  for (auto& t : pool) t.join();
  out.join();
  FF_CHECK(error.empty(), "preprocess: %s", error.c_str());
  FF_CHECK(stats.documents > 0, "preprocess: no documents in '%s'%s (empty input)", c.input.c_str(),
           stats.skipped_empty ? strprintf(" (%lld empty ones skipped)", (long long)stats.skipped_empty).c_str() : "");
  writer.finish();
  shown.finish();
  stats.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (c.progress) {
    std::fprintf(stderr, "preprocess: %lld documents, %lld tokens, %.1f MB in %.2f s: %.0f documents/s, %.0f tokens/s%s\n",
                 (long long)stats.documents, (long long)stats.tokens, stats.input_bytes / 1e6,
                 stats.seconds, stats.documents / stats.seconds, stats.tokens / stats.seconds,
                 stats.skipped_empty ? strprintf("; skipped %lld empty documents", (long long)stats.skipped_empty).c_str() : "");
  }
  return stats;
}

}  // namespace ff
