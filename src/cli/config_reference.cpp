#include "cli/config_reference.h"

#include "cli/cli_config.h"
#include "core/check.h"

namespace ff {

namespace {

std::string escaped(std::string s) {  // a Markdown table cell
  std::string out;
  for (char c : s) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

// One row per field: the flag, its type (or an enum's choices), its default and its help.
struct ReferenceRows {
  std::string& out;
  template <class T>
  void operator()(T& field, const char* name, const char* help) {
    auto [type, def] = flag_type_and_default(field);
    if (def.empty()) def = "(empty)";
    out += strprintf("| `--%s` | %s | `%s` | %s |\n", name, escaped(type).c_str(), escaped(def).c_str(),
                     escaped(help).c_str());
  }
};

template <class Section>
void section(std::string& out, const char* title, const char* key, Section s) {
  out += strprintf("\n## %s (`%s`)\n\n| flag | type | default | meaning |\n|---|---|---|---|\n", title, key);
  ReferenceRows rows{out};
  s.visit_fields(rows);
}

}  // namespace

std::string config_reference(const RunConfig& defaults) {
  std::string out =
      "# Run configuration reference\n\n"
      "Every field of a run's config: a flag of `fivefold train` (and of the recipes built on it), and a key of\n"
      "the JSON config file under its section (`--config FILE`: `{\"model\": {...}, \"optim\": {...}, \"train\":\n"
      "{...}, \"parallel\": {...}}`). Defaults, then a model preset, then the file, then the flags apply in that\n"
      "order. The model defaults below are those of the default preset (`train.model_preset`).\n\n"
      "This page is the output of `fivefold config-reference`; a test fails when it is stale.\n";
  section(out, "Model", "model", defaults.model);
  section(out, "Optimizer", "optim", defaults.optim);
  section(out, "Training", "train", defaults.train);
  section(out, "Parallel layout", "parallel", defaults.parallel);
  return out;
}

}  // namespace ff
