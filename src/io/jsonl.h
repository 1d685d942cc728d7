// JSON Lines: one JSON value per line; blank lines are skipped. Every record reaches `fn` with
// `where` ("FILE line N") for its errors; a line that is not JSON is an error naming it, and a
// file that cannot be opened one that says what it was to hold (`what`).
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace ff {

void for_each_jsonl(const std::string& path, const std::string& what,
                    const std::function<void(const nlohmann::json& record, const std::string& where)>& fn);

}  // namespace ff
