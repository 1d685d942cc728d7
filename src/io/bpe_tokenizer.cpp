// Byte-level BPE from a Hugging Face tokenizer.json, exact against the reference algorithm:
//   1. added tokens ("<|endoftext|>", ...) are cut out of the text first, longest match first;
//   2. the normaliser: none, or NFC;
//   3. the pre-tokenizer regex splits each remaining span into words. Two patterns are supported,
//      recognised from the file, and matched here by hand (std::regex has no \p{L}):
//        GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//        Llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//                 | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//      (Qwen2's variant with \p{N} instead of \p{N}{1,3} too). Character classes come from ICU:
//      \p{L} = general categories Lu Ll Lt Lm Lo, \p{N} = Nd Nl No, \s = White_Space.
//   4. each word's bytes become printable code points (GPT-2 bytes_to_unicode: the printable
//      Latin-1 bytes map to themselves, the other 68 to U+0100.. in byte order);
//   5. merges: repeatedly take the adjacent pair with the lowest merge rank and merge every
//      occurrence of it left to right, until no pair has a rank; with "ignore_merges" a word that
//      is itself in the vocabulary is one token.
// Decode maps tokens back to their strings and code points back to bytes.
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/check.h"
#include "io/tokenizer.h"

namespace ff {
namespace {

constexpr const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
constexpr const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum class Pattern { gpt2, llama3 };

// One code point of the text with its byte range. Invalid UTF-8 bytes become one "other"
// character each, so any byte string splits (and round-trips).
struct Char {
  int32_t cp;
  uint32_t begin, end;
  bool L, N, S;
};

std::vector<Char> decode_utf8(std::string_view s) {
  std::vector<Char> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    int32_t cp = -1;
    if (len == 1) {
      cp = c;
    } else if (len > 1 && i + static_cast<size_t>(len) <= s.size()) {
      cp = c & (0x7f >> len);
      for (int k = 1; k < len; ++k) {
        const auto d = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
        if ((d >> 6) != 2) { cp = -1; break; }
        cp = (cp << 6) | (d & 0x3f);
      }
      static constexpr int32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
      if (cp >= 0 && (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) cp = -1;
    }
    if (cp < 0) len = 1;
    Char ch{cp, static_cast<uint32_t>(i), static_cast<uint32_t>(i + static_cast<size_t>(len)), false, false, false};
    if (cp >= 0) {
      const auto cat = u_charType(cp);
      ch.L = cat == U_UPPERCASE_LETTER || cat == U_LOWERCASE_LETTER || cat == U_TITLECASE_LETTER ||
             cat == U_MODIFIER_LETTER || cat == U_OTHER_LETTER;
      ch.N = cat == U_DECIMAL_DIGIT_NUMBER || cat == U_LETTER_NUMBER || cat == U_OTHER_NUMBER;
      ch.S = u_isUWhiteSpace(cp);
    }
    out.push_back(ch);
    i += static_cast<size_t>(len);
  }
  return out;
}

// Length (in characters) of the match at position i, for the pattern; always >= 1.
size_t match_at(const std::vector<Char>& t, size_t i, Pattern p, int max_digits) {
  const size_t n = t.size();
  auto cp = [&](size_t k) { return k < n ? t[k].cp : -2; };
  auto other = [&](size_t k) { return k < n && !t[k].L && !t[k].N && !t[k].S; };
  auto lower = [&](size_t k) { int32_t c = cp(k); return p == Pattern::llama3 && c >= 'A' && c <= 'Z' ? c + 32 : c; };
  // Contractions: 's 't 'm 'd 're 've 'll (case-insensitive for Llama-3).
  if (cp(i) == '\'') {
    const int32_t a = lower(i + 1), b = lower(i + 2);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  auto run = [&](size_t k, auto pred) { while (k < n && pred(k)) ++k; return k; };
  auto is_L = [&](size_t k) { return t[k].L; };
  auto is_N = [&](size_t k) { return t[k].N; };
  auto is_S = [&](size_t k) { return t[k].S; };
  if (p == Pattern::gpt2) {
    const size_t j = cp(i) == ' ' ? i + 1 : i;
    if (j < n && t[j].L) return run(j, is_L) - i;
    if (j < n && t[j].N) return run(j, is_N) - i;
    if (other(j)) return run(j, other) - i;
  } else {
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (i < n && !t[i].L && !t[i].N && cp(i) != '\r' && cp(i) != '\n' && i + 1 < n && t[i + 1].L)
      return run(i + 1, is_L) - i;
    if (t[i].L) return run(i, is_L) - i;
    // \p{N}{1,max_digits}
    if (t[i].N) {
      size_t k = i;
      while (k < n && t[k].N && k - i < static_cast<size_t>(max_digits)) ++k;
      return k - i;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    const size_t j = cp(i) == ' ' ? i + 1 : i;
    if (other(j)) return run(run(j, other), [&](size_t k) { return cp(k) == '\r' || cp(k) == '\n'; }) - i;
    // \s*[\r\n]+ : up to and including the last \r or \n of the whitespace run
    const size_t k = run(i, is_S);
    for (size_t m = k; m > i; --m)
      if (cp(m - 1) == '\r' || cp(m - 1) == '\n') return m - i;
  }
  // \s+(?!\S) then \s+
  const size_t k = run(i, is_S);
  if (k > i) {
    if (k == n || k - i == 1) return k - i;
    return k - 1 - i;
  }
  return 1;  // not reached for valid classes; keeps the loop total
}

class BpeTokenizer : public Tokenizer {
 public:
  // name: where the JSON came from (messages); json: the tokenizer.json text.
  BpeTokenizer(const std::string& name, const std::string& json);
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::string describe() const override {
    return strprintf("bpe %s (vocabulary %lld, %zu merges)", path_.c_str(), (long long)vocab_size(), ranks_.size());
  }

 private:
  void encode_span(std::string_view text, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  std::string path_;
  Pattern pattern_ = Pattern::gpt2;
  int max_digits_ = 3;
  bool add_prefix_space_ = false, nfc_ = false, ignore_merges_ = false;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<std::string, int32_t> ranks_;  // "left right" -> merge rank
  std::vector<std::string> id_to_token_;
  std::vector<bool> is_added_;
  std::vector<std::pair<std::string, int32_t>> added_;  // longest first
  bool added_first_byte_[256] = {};
  std::string byte_to_utf8_[256];
  std::unordered_map<int32_t, uint8_t> cp_to_byte_;
};

std::string utf8(int32_t cp) {
  std::string s;
  if (cp < 0x80) s += static_cast<char>(cp);
  else if (cp < 0x800) { s += static_cast<char>(0xc0 | (cp >> 6)); s += static_cast<char>(0x80 | (cp & 0x3f)); }
  else { s += static_cast<char>(0xe0 | (cp >> 12)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
         s += static_cast<char>(0x80 | (cp & 0x3f)); }
  return s;
}

BpeTokenizer::BpeTokenizer(const std::string& name, const std::string& json) : path_(name) {
  const std::string& path = name;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const std::exception& e) {
    FF_FAIL("tokenizer '%s': not valid JSON: %s", path.c_str(), e.what());
  }
  auto str = [](const nlohmann::json& o, const char* k) {
    return o.is_object() && o.contains(k) && o[k].is_string() ? o[k].get<std::string>() : std::string();
  };
  FF_CHECK(j.is_object() && j.contains("model") && str(j["model"], "type") == "BPE",
           "tokenizer '%s': model.type must be \"BPE\" (a byte-level BPE tokenizer.json)", path.c_str());
  const auto& m = j["model"];
  FF_CHECK(!(m.contains("byte_fallback") && m["byte_fallback"].is_boolean() && m["byte_fallback"].get<bool>()),
           "tokenizer '%s': byte_fallback BPE (SentencePiece-style) is not byte-level BPE; use the .model with "
           "--tokenizer_type sentencepiece", path.c_str());
  ignore_merges_ = m.contains("ignore_merges") && m["ignore_merges"].is_boolean() && m["ignore_merges"].get<bool>();

  // Normaliser: none or NFC.
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const std::string t = str(j["normalizer"], "type");
    FF_CHECK(t == "NFC", "tokenizer '%s': normalizer \"%s\" is not supported (only none or NFC)", path.c_str(), t.c_str());
    nfc_ = true;
  }
  // Pre-tokenizer: ByteLevel (GPT-2 regex), or Sequence[Split(regex), ByteLevel(use_regex=false)].
  bool found = false;
  auto visit = [&](const nlohmann::json& pt, auto& self) -> void {
    const std::string t = str(pt, "type");
    if (t == "Sequence") {
      for (const auto& sub : pt.value("pretokenizers", nlohmann::json::array())) self(sub, self);
    } else if (t == "ByteLevel") {
      add_prefix_space_ = pt.value("add_prefix_space", false);
      if (pt.value("use_regex", true)) { pattern_ = Pattern::gpt2; found = true; }
    } else if (t == "Split") {
      const std::string re = pt.contains("pattern") ? str(pt["pattern"], "Regex") : "";
      if (re == kLlama3Pattern) { pattern_ = Pattern::llama3; max_digits_ = 3; }
      else if (re == kQwen2Pattern) { pattern_ = Pattern::llama3; max_digits_ = 1; }
      else if (re == kGpt2Pattern) pattern_ = Pattern::gpt2;
      else FF_FAIL("tokenizer '%s': pre-tokenizer regex %s is not one of the supported GPT-2 / Llama-3 / Qwen2 "
                   "patterns", path.c_str(), re.c_str());
      found = true;
    } else {
      FF_FAIL("tokenizer '%s': pre-tokenizer \"%s\" is not supported (byte-level BPE uses ByteLevel or Split + "
              "ByteLevel)", path.c_str(), t.c_str());
    }
  };
  FF_CHECK(j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object(), "tokenizer '%s': no pre_tokenizer; byte-level "
           "BPE needs a ByteLevel pre-tokenizer", path.c_str());
  visit(j["pre_tokenizer"], visit);
  FF_CHECK(found, "tokenizer '%s': the pre-tokenizer has no splitting regex", path.c_str());

  // Vocabulary and added tokens.
  FF_CHECK(m.contains("vocab") && m["vocab"].is_object(), "tokenizer '%s': model.vocab must be an object", path.c_str());
  int64_t max_id = -1;
  auto add_id = [&](const std::string& tok, int64_t id, bool added) {
    FF_CHECK(id >= 0 && id < INT32_MAX, "tokenizer '%s': token \"%s\" has id %lld out of range", path.c_str(), tok.c_str(),
             (long long)id);
    if (id >= static_cast<int64_t>(id_to_token_.size())) {
      id_to_token_.resize(static_cast<size_t>(id + 1));
      is_added_.resize(static_cast<size_t>(id + 1), false);
    }
    id_to_token_[static_cast<size_t>(id)] = tok;
    if (added) is_added_[static_cast<size_t>(id)] = true;
    max_id = std::max(max_id, id);
  };
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    FF_CHECK(it->is_number_integer(), "tokenizer '%s': vocab entry \"%s\" is not an integer id", path.c_str(), it.key().c_str());
    vocab_[it.key()] = it->get<int32_t>();
    add_id(it.key(), it->get<int64_t>(), false);
  }
  for (const auto& a : j.value("added_tokens", nlohmann::json::array())) {
    const std::string content = str(a, "content");
    FF_CHECK(!content.empty() && a.contains("id") && a["id"].is_number_integer(),
             "tokenizer '%s': an added_tokens entry lacks content or id", path.c_str());
    add_id(content, a["id"].get<int64_t>(), true);
    added_.emplace_back(content, a["id"].get<int32_t>());
    added_first_byte_[static_cast<unsigned char>(content[0])] = true;
  }
  std::sort(added_.begin(), added_.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  FF_CHECK(max_id >= 0, "tokenizer '%s': the vocabulary is empty", path.c_str());
  // Merges: "a b" strings or ["a", "b"] pairs; rank = position.
  FF_CHECK(m.contains("merges") && m["merges"].is_array(), "tokenizer '%s': model.merges must be an array", path.c_str());
  int32_t rank = 0;
  for (const auto& mg : m["merges"]) {
    std::string key;
    if (mg.is_string()) key = mg.get<std::string>();
    else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string())
      key = mg[0].get<std::string>() + " " + mg[1].get<std::string>();
    FF_CHECK(!key.empty() && std::count(key.begin(), key.end(), ' ') == 1,
             "tokenizer '%s': merge %d is not \"left right\" or [left, right]", path.c_str(), rank);
    ranks_.emplace(key, rank++);
  }
  // bytes_to_unicode.
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const int32_t cp = printable ? b : 256 + n++;
    byte_to_utf8_[b] = utf8(cp);
    cp_to_byte_[cp] = static_cast<uint8_t>(b);
  }
  auto special = [&](std::initializer_list<const char*> names) {
    for (const char* name : names)
      for (const auto& [c, id] : added_)
        if (c == name) return id;
    return -1;
  };
  eod_ = special({"<|endoftext|>", "<|end_of_text|>", "</s>"});
  bos_ = special({"<|begin_of_text|>", "<|startoftext|>", "<s>"});
  pad_ = special({"<pad>", "<|pad|>", "<|finetune_right_pad_id|>"});
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<std::string> sym;
  sym.reserve(word.size());
  for (char c : word) sym.push_back(byte_to_utf8_[static_cast<unsigned char>(c)]);
  if (ignore_merges_) {
    std::string whole;
    for (const auto& s : sym) whole += s;
    if (auto it = vocab_.find(whole); it != vocab_.end()) { out.push_back(it->second); return; }
  }
  std::string key;
  while (sym.size() > 1) {
    int32_t best = INT32_MAX;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      key.assign(sym[i]).append(" ").append(sym[i + 1]);
      auto it = ranks_.find(key);
      if (it != ranks_.end() && it->second < best) { best = it->second; best_i = i; }
    }
    if (best == INT32_MAX) break;
    const std::string a = sym[best_i], b = sym[best_i + 1];
    std::vector<std::string> merged;
    merged.reserve(sym.size());
    for (size_t i = 0; i < sym.size();) {
      if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) { merged.push_back(a + b); i += 2; }
      else merged.push_back(std::move(sym[i++]));
    }
    sym.swap(merged);
  }
  for (const auto& s : sym) {
    auto it = vocab_.find(s);
    FF_CHECK(it != vocab_.end(), "tokenizer '%s': piece \"%s\" is not in the vocabulary (an incomplete byte-level "
             "vocabulary?)", path_.c_str(), s.c_str());
    out.push_back(it->second);
  }
}

void BpeTokenizer::encode_span(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::string normalized;
  if (nfc_) {
    UErrorCode err = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
    FF_CHECK(U_SUCCESS(err), "tokenizer '%s': ICU has no NFC normaliser", path_.c_str());
    auto u = icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
    nfc->normalize(u, err).toUTF8String(normalized);
    text = normalized;
  }
  std::string prefixed;
  if (add_prefix_space_ && text.front() != ' ') {
    prefixed = " " + std::string(text);
    text = prefixed;
  }
  const auto chars = decode_utf8(text);
  for (size_t i = 0; i < chars.size();) {
    const size_t len = match_at(chars, i, pattern_, max_digits_);
    const uint32_t b = chars[i].begin, e = chars[i + len - 1].end;
    encode_word(text.substr(b, e - b), out);
    i += len;
  }
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    int32_t hit = -1;
    size_t hit_len = 0;
    if (added_first_byte_[static_cast<unsigned char>(text[i])])
      for (const auto& [c, id] : added_)
        if (text.compare(i, c.size(), c) == 0) { hit = id; hit_len = c.size(); break; }
    if (hit < 0) { ++i; continue; }
    encode_span(text.substr(start, i - start), out);
    out.push_back(hit);
    i += hit_len;
    start = i;
  }
  encode_span(text.substr(start), out);
  return out;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (size_t k = 0; k < ids.size(); ++k) {
    const int32_t id = ids[k];
    FF_CHECK(id >= 0 && id < vocab_size(), "tokenizer '%s': token %d at position %zu is outside the vocabulary [0, %lld)",
             path_.c_str(), id, k, (long long)vocab_size());
    const std::string& tok = id_to_token_[static_cast<size_t>(id)];
    if (is_added_[static_cast<size_t>(id)]) { out += tok; continue; }
    for (const Char& c : decode_utf8(tok)) {
      auto it = cp_to_byte_.find(c.cp);
      FF_CHECK(it != cp_to_byte_.end(), "tokenizer '%s': token %d (\"%s\") has a character outside the byte-level "
               "alphabet", path_.c_str(), id, tok.c_str());
      out.push_back(static_cast<char>(it->second));
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const std::string& name, const std::string& json) {
  return std::make_unique<BpeTokenizer>(name, json);
}

}  // namespace ff
