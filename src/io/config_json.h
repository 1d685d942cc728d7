// JSON for configs, derived from their field lists (core/fields.h). Reading reports every
// problem at once (unknown key, wrong type, bad enum spelling), each naming "section.field".
#pragma once
#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/fields.h"

namespace ff {

namespace detail {

struct JsonWriter {
  nlohmann::json& out;
  template <class T>
  void operator()(T& field, const char* name, const char*) {
    if constexpr (FieldEnum<T>) out[name] = enum_to_string(field);
    else out[name] = field;
  }
};

struct JsonReader {
  const nlohmann::json& in;
  std::string section;
  std::vector<std::string>& errors;
  std::vector<std::string> seen;
  template <class T>
  void operator()(T& field, const char* name, const char*) {
    auto it = in.find(name);
    if (it == in.end()) return;
    seen.emplace_back(name);
    const std::string where = section + "." + name;
    try {
      if constexpr (FieldEnum<T>) {
        if (!it->is_string() || !enum_from_string(it->template get<std::string>(), field))
          errors.push_back(where + " = " + it->dump() + ": must be one of " + enum_choices(T{}));
      } else if constexpr (std::is_same_v<T, bool>) {
        if (!it->is_boolean()) errors.push_back(where + " = " + it->dump() + ": must be true or false");
        else field = it->template get<bool>();
      } else if constexpr (std::is_integral_v<T>) {
        if (!it->is_number_integer()) errors.push_back(where + " = " + it->dump() + ": must be an integer");
        else if (std::is_unsigned_v<T> && !it->is_number_unsigned())
          errors.push_back(where + " = " + it->dump() + ": must be a non-negative integer");
        else field = it->template get<T>();
      } else if constexpr (std::is_floating_point_v<T>) {
        if (!it->is_number()) errors.push_back(where + " = " + it->dump() + ": must be a number");
        else field = it->template get<T>();
      } else {
        if (!it->is_string()) errors.push_back(where + " = " + it->dump() + ": must be a string");
        else field = it->template get<std::string>();
      }
    } catch (const std::exception& e) {
      errors.push_back(where + ": " + e.what());
    }
  }
};

}  // namespace detail

template <class Config>
nlohmann::json config_to_json(Config& c) {
  nlohmann::json j = nlohmann::json::object();
  detail::JsonWriter w{j};
  c.visit_fields(w);
  return j;
}

// Reads the fields present in `j` into `c`; appends one message per problem to `errors`.
template <class Config>
void config_from_json(Config& c, const nlohmann::json& j, const std::string& section, std::vector<std::string>& errors) {
  if (!j.is_object()) {
    errors.push_back(section + ": must be a JSON object");
    return;
  }
  detail::JsonReader r{j, section, errors, {}};
  c.visit_fields(r);
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(r.seen.begin(), r.seen.end(), it.key()) == r.seen.end())
      errors.push_back(section + "." + it.key() + ": unknown field (see fivefold train --help for the list)");
}

}  // namespace ff
