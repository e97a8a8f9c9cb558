// Configuration trees (JSON, nlohmann::ordered_json so files keep their key order). Every preset
// defines the complete tree of its settings with defaults; user overrides are merged into it
// strictly: a key that the defaults do not have, or a value of another type, is an error that
// names the full key path and lists the valid keys there. Builders then read keys knowing they
// exist, and check ranges with `require`.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace models {

using Json = nlohmann::ordered_json;

// Merges `overrides` into `config` in place. Objects merge key by key; any other value replaces
// the default if the types agree (an integer may replace a float; a float never an integer).
// `path` prefixes the key names in errors (e.g. "model").
void merge_strict(Json& config, const Json& overrides, const std::string& path = "");

// Typed access with an error naming the key path: cfg_get<int64_t>(j, "model", "dim").
template <class T>
T cfg_get(const Json& j, const std::string& path, const std::string& key);

// Throws "config: <path>.<key> = <value>: <message>" unless ok.
void require(bool ok, const Json& j, const std::string& path, const std::string& key,
             const std::string& message);

}  // namespace models
