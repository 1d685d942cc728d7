#include "io/jsonl.h"

#include <fstream>

#include "core/check.h"

namespace ff {

void for_each_jsonl(const std::string& path, const std::string& what,
                    const std::function<void(const nlohmann::json& record, const std::string& where)>& fn) {
  std::ifstream f(path);
  FF_CHECK(f.good(), "'%s': cannot open it (%s)", path.c_str(), what.c_str());
  std::string line;
  for (int64_t n = 1; std::getline(f, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = strprintf("%s line %lld", path.c_str(), (long long)n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      FF_FAIL("%s: not valid JSON (%s)", where.c_str(), e.what());
    }
    fn(j, where);
  }
}

}  // namespace ff
