#include "models/hf_convert.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "core/check.h"
#include "io/progress.h"
#include "models/decoder_lm.h"
#include "models/layer_kind.h"

namespace ff {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// One HF tensor of a concrete model: its name and the fivefold tensors it is made of.
struct Planned {
  std::string hf;
  std::vector<std::string> internal;
  HfLayout layout;
  std::vector<int64_t> rows;  // concat: dim 0 of each internal tensor
  bool unit_axis;
};

bool applies(HfWhen w, const ModelConfig& c) {
  switch (w) {
    case HfWhen::always: return true;
    case HfWhen::untied: return !c.tie_embeddings;
    case HfWhen::shared_expert: return c.moe_shared_expert_hidden > 0;
  }
  return false;
}

// The model's HF tensors in file order: the embedding, each layer's (its kind's rules, {L} = the
// layer's HF block: j / 2 in paired families, else j), the final norm and head.
std::vector<Planned> plan(const HfTable& t, const ModelConfig& c) {
  std::vector<Planned> out;
  auto add = [&](const HfRule& r, const std::string& hf_prefix, const std::string& ff_prefix) {
    if (!applies(r.when, c)) return;
    FF_CHECK(r.layout != HfLayout::concat || r.rows.size() == r.internal.size(),
             "the rule for Hugging Face '%s' gives %zu row counts for %zu parts", r.hf.c_str(), r.rows.size(),
             r.internal.size());
    const bool per_expert = r.hf.find("{E}") != std::string::npos;
    for (int64_t e = 0; e < (per_expert ? c.num_experts : 1); ++e) {
      Planned p{hf_prefix + hf_fill(r.hf, 0, e), {}, r.layout, r.rows, r.unit_axis};
      for (const auto& tmpl : r.internal) p.internal.push_back(ff_prefix + hf_fill(tmpl, 0, e));
      out.push_back(std::move(p));
    }
  };
  for (const HfRule& r : t.input) add(r, "", "");
  const std::string pattern = c.pattern();
  for (size_t j = 0; j < pattern.size(); ++j) {
    const LayerKindInfo* kind = layer_kind_of(pattern[j]);
    FF_CHECK(kind, "model.layer_pattern: unknown character '%c'", pattern[j]);
    const std::string hf_prefix = hf_fill(t.block, static_cast<int64_t>(t.paired ? j / 2 : j), 0);
    const std::string ff_prefix = layer_prefix(pattern, j) + ".";
    for (const HfRule& r : kind->hf_rules(t.family, c)) add(r, hf_prefix, ff_prefix);
  }
  for (const HfRule& r : t.output) add(r, "", "");
  return out;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// "12 + 12 + 10" for a message.
std::string rows_str(const std::vector<int64_t>& rows) {
  std::string out;
  for (size_t k = 0; k < rows.size(); ++k) out += (k ? " + " : "") + std::to_string(rows[k]);
  return out;
}

// An HF tensor to write: borrowed data (same layout) or owned (built).
struct OutTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  std::vector<float> owned;
};

// The HF tensor of p from its fivefold parts.
OutTensor build(const Planned& p, const std::vector<const HostTensor*>& parts) {
  OutTensor t;
  t.name = p.hf;
  if (p.layout == HfLayout::same) {
    t.shape = parts[0]->shape;
    t.data = parts[0]->data.data();
  } else if (p.layout == HfLayout::zero_bias) {
    t.shape = {parts[0]->shape.at(0)};
    t.owned.assign(static_cast<size_t>(t.shape[0]), 0.0f);
  } else {  // concat: [rows[k], rest...] each -> [sum rows, rest...]
    auto rest = [](const std::vector<int64_t>& s) { return std::vector<int64_t>(s.empty() ? s.end() : s.begin() + 1, s.end()); };
    for (size_t k = 0; k < parts.size(); ++k) {
      const std::vector<int64_t>& s = parts[k]->shape;
      FF_CHECK(!s.empty() && s[0] == p.rows[k] && rest(s) == rest(parts[0]->shape),
               "'%s' (part %zu of Hugging Face '%s') has shape %s; the config gives it %lld rows, and the trailing "
               "sizes %s of the first part", p.internal[k].c_str(), k, p.hf.c_str(), shape_str(s).c_str(),
               (long long)p.rows[k], shape_str(rest(parts[0]->shape)).c_str());
      t.owned.insert(t.owned.end(), parts[k]->data.begin(), parts[k]->data.end());
    }
    t.shape = parts[0]->shape;
    t.shape[0] = std::accumulate(p.rows.begin(), p.rows.end(), int64_t(0));
    t.data = t.owned.data();
  }
  if (t.data == nullptr) t.data = t.owned.data();
  if (p.unit_axis) t.shape.insert(t.shape.begin() + 1, 1);
  return t;
}

// The fivefold tensors of p from its HF tensor t, read as `name` from `file`.
void split(const Planned& p, HostTensor t, const std::string& file, const std::string& name, TensorMap& out) {
  if (p.unit_axis) {
    FF_CHECK(t.shape.size() >= 2 && t.shape[1] == 1, "'%s': tensor '%s' has shape %s; Hugging Face stores it with a "
             "unit axis at dim 1 ([C, 1, K])", file.c_str(), name.c_str(), shape_str(t.shape).c_str());
    t.shape.erase(t.shape.begin() + 1);
  }
  if (p.layout == HfLayout::same) {
    out[p.internal[0]] = std::move(t);
    return;
  }
  if (p.layout == HfLayout::zero_bias) {
    for (float x : t.data)
      FF_CHECK(x == 0.0f, "'%s': tensor '%s' is a non-zero bias; fivefold attention has no q/k/v bias", file.c_str(),
               name.c_str());
    return;
  }
  // concat: pieces of dim 0 of the sizes the config gives.
  const int64_t total = std::accumulate(p.rows.begin(), p.rows.end(), int64_t(0));
  std::string parts;
  for (const auto& n : p.internal) parts += (parts.empty() ? "" : " | ") + n;
  FF_CHECK(!t.shape.empty() && t.shape[0] == total, "'%s': tensor '%s' has shape %s; this config.json needs dim 0 = %s "
           "= %lld (fivefold's %s, in this order)", file.c_str(), name.c_str(), shape_str(t.shape).c_str(), rows_str(p.rows).c_str(),
           (long long)total, parts.c_str());
  const int64_t row = numel(t.shape) / std::max<int64_t>(total, 1);
  int64_t at = 0;
  for (size_t k = 0; k < p.internal.size(); ++k) {
    std::vector<int64_t> shape = t.shape;
    shape[0] = p.rows[k];
    const auto begin = t.data.begin() + static_cast<std::ptrdiff_t>(at * row);
    out[p.internal[k]] = {shape, std::vector<float>(begin, begin + static_cast<std::ptrdiff_t>(p.rows[k] * row))};
    at += p.rows[k];
  }
}

}  // namespace

void export_hf(const ModelConfig& c, const TensorMap& tensors, const std::string& out_dir,
               const HfExportOptions& o) {
  const HfTable& table = hf_table(hf_family_for(c, o.family));
  std::set<std::string> used;
  std::vector<OutTensor> out;
  for (const Planned& p : plan(table, c)) {
    std::vector<const HostTensor*> parts;
    for (const auto& n : p.internal) {
      auto it = tensors.find(n);
      FF_CHECK(it != tensors.end(), "fivefold tensor '%s' (for Hugging Face '%s') is missing from the model",
               n.c_str(), p.hf.c_str());
      parts.push_back(&it->second);
      if (p.layout != HfLayout::zero_bias) used.insert(n);
    }
    out.push_back(build(p, parts));
  }
  for (const auto& [name, t] : tensors)
    FF_CHECK(used.count(name), "fivefold tensor '%s' has no Hugging Face name in the %s table; nothing was written",
             name.c_str(), table.model_type.c_str());

  // Shards: greedy in plan order, each at most max_shard_bytes (a bigger tensor gets its own).
  const size_t esize = o.bf16 ? 2 : 4;
  std::vector<std::vector<size_t>> shards(1);
  int64_t in_shard = 0, total = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const int64_t bytes = numel(out[i].shape) * static_cast<int64_t>(esize);
    if (!shards.back().empty() && in_shard + bytes > o.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes;
    total += bytes;
  }
  fs::create_directories(out_dir);
  json weight_map = json::object();
  Progress shown("writing " + out_dir, total, ProgressUnit::bytes, "", printing(o.progress));
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : strprintf("model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    std::vector<std::vector<uint16_t>> halves;
    halves.reserve(shards[s].size());
    std::vector<SafetensorsEntry> entries;
    for (size_t i : shards[s]) {
      const OutTensor& t = out[i];
      weight_map[t.name] = file;
      if (!o.bf16) {
        entries.push_back({t.name, t.shape, t.data, StDtype::F32});
        continue;
      }
      std::vector<uint16_t> h(static_cast<size_t>(numel(t.shape)));
      for (size_t k = 0; k < h.size(); ++k) h[k] = f32_to_bf16(t.data[k]);
      halves.push_back(std::move(h));
      entries.push_back({t.name, t.shape, halves.back().data(), StDtype::BF16});
    }
    write_safetensors(out_dir + "/" + file, entries, {{"format", "pt"}}, &shown);
  }
  if (shards.size() > 1) {
    std::ofstream f(out_dir + "/model.safetensors.index.json");
    f << json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2) << "\n";
    FF_CHECK(f.good(), "cannot write %s/model.safetensors.index.json", out_dir.c_str());
  }
  std::ofstream cf(out_dir + "/config.json");
  cf << hf_config_text(c, table.family, o.bf16);
  FF_CHECK(cf.good(), "cannot write %s/config.json", out_dir.c_str());
}

HfImport import_hf(const std::string& dir) {
  HfImport r;
  r.model = import_hf_config(dir, &r.family);
  const HfTable& table = hf_table(r.family);

  // The files and which holds each tensor.
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> where;
  const std::string index = dir + "/model.safetensors.index.json";
  if (fs::exists(index)) {
    json ij;
    try {
      ij = json::parse(std::ifstream(index));
    } catch (const std::exception& e) {
      FF_FAIL("'%s' is not valid JSON: %s", index.c_str(), e.what());
    }
    FF_CHECK(ij.contains("weight_map") && ij["weight_map"].is_object(), "'%s' has no weight_map object", index.c_str());
    std::map<std::string, size_t> file_no;
    for (auto it = ij["weight_map"].begin(); it != ij["weight_map"].end(); ++it) {
      FF_CHECK(it->is_string(), "'%s': weight_map[%s] is not a file name", index.c_str(), it.key().c_str());
      const std::string fname = it->get<std::string>();
      FF_CHECK(fname.find('/') == std::string::npos, "'%s': weight_map names '%s' outside the folder", index.c_str(),
               fname.c_str());
      if (!file_no.count(fname)) {
        file_no[fname] = files.size();
        files.emplace_back(dir + "/" + fname);
      }
      where[it.key()] = file_no[fname];
      FF_CHECK(files[file_no[fname]].contains(it.key()), "'%s' says tensor '%s' is in '%s', which lacks it",
               index.c_str(), it.key().c_str(), fname.c_str());
    }
    for (size_t i = 0; i < files.size(); ++i)
      for (const auto& n : files[i].names())
        FF_CHECK(where.count(n) && where[n] == i, "'%s': tensor '%s' is not in the index's weight_map",
                 files[i].path().c_str(), n.c_str());
  } else {
    files.emplace_back(dir + "/model.safetensors");
    for (const auto& n : files[0].names()) where[n] = 0;
  }

  // The names the table spells -> the names in the files. Files under alt_root ("model." for
  // Nemotron-H) are read as under root ("backbone."), one root per model; older names as the
  // table's.
  bool alt = false;
  if (!table.alt_root.empty()) {
    bool under_root = false;
    for (const auto& [name, f] : where) {
      under_root = under_root || name.rfind(table.root, 0) == 0;
      alt = alt || name.rfind(table.alt_root, 0) == 0;
    }
    FF_CHECK(!(under_root && alt), "'%s': some tensors are named '%s...', others '%s...'; a %s model uses one root",
             dir.c_str(), table.root.c_str(), table.alt_root.c_str(), table.model_type.c_str());
  }
  std::map<std::string, std::string> actual;
  for (const auto& [name, f] : where) {
    std::string n = alt && name.rfind(table.alt_root, 0) == 0 ? table.root + name.substr(table.alt_root.size()) : name;
    for (const auto& [old_name, new_name] : table.renamed)
      if (n == old_name) n = new_name;
    const auto [it, fresh] = actual.emplace(n, name);
    FF_CHECK(fresh, "'%s': tensors '%s' and '%s' are both read as '%s'", dir.c_str(), it->second.c_str(), name.c_str(),
             n.c_str());
  }
  auto shown = [&](const std::string& n) {  // a table name as this model's files spell it
    return alt && n.rfind(table.root, 0) == 0 ? table.alt_root + n.substr(table.root.size()) : n;
  };

  const auto planned = plan(table, r.model);
  std::set<std::string> expected;
  for (const auto& p : planned) expected.insert(p.hf);
  for (const auto& [n, name] : actual) {
    if (expected.count(n)) continue;
    bool ignored = false;
    for (const auto& tmpl : table.ignored) ignored = ignored || hf_match(tmpl, n);
    FF_CHECK(ignored, "'%s': unknown tensor '%s': not in the %s table and not listed as ignored",
             files[where[name]].path().c_str(), name.c_str(), table.model_type.c_str());
  }
  for (const Planned& p : planned) {
    auto it = actual.find(p.hf);
    FF_CHECK(it != actual.end(), "tensor '%s' is missing from %s (the %s layout of this config.json needs it)",
             shown(p.hf).c_str(), dir.c_str(), table.model_type.c_str());
    const SafetensorsFile& file = files[where[it->second]];
    split(p, file.read_any(it->second), file.path(), it->second, r.tensors);
  }
  return r;
}

}  // namespace ff
