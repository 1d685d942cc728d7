// Configs are plain structs that list their fields exactly once:
//
//   struct TrainConfig {
//     int64_t steps = 1000;
//     template <class V> void visit_fields(V& v) { v(steps, "steps", "optimizer steps to run"); }
//   };
//
// The default is the member initialiser; the visitor gives name and help. JSON reading and
// writing (io/config_json.h), command-line flags and --help (cli/) all derive from this list.
// Enums take part through a names table found by argument-dependent lookup:
//   std::span<const EnumName<E>> enum_names(E);
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace ff {

template <class E>
struct EnumName {
  E value;
  const char* name;
};

template <class E>
std::string enum_to_string(E e) {
  for (const auto& en : enum_names(E{}))
    if (en.value == e) return en.name;
  return "?";
}

// All accepted spellings, "a|b|c", for error messages and --help.
template <class E>
std::string enum_choices(E) {
  std::string s;
  for (const auto& en : enum_names(E{})) s += (s.empty() ? "" : "|") + std::string(en.name);
  return s;
}

template <class E>
bool enum_from_string(std::string_view s, E& out) {
  for (const auto& en : enum_names(E{}))
    if (s == en.name) {
      out = en.value;
      return true;
    }
  return false;
}

template <class T>
concept FieldEnum = std::is_enum_v<T> && requires(T t) { enum_names(t); };

}  // namespace ff
