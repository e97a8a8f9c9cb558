#include "models/config.h"

#include "engine/error.h"

namespace models {

namespace {
std::string join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}
std::string type_name(const Json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  return "null";
}
bool compatible(const Json& def, const Json& v) {
  if (def.is_number_float()) return v.is_number() && !v.is_boolean();
  if (def.is_number_integer()) return v.is_number_integer();
  if (def.is_null()) return true;  // "unset" defaults accept anything
  return def.type() == v.type();
}
}  // namespace

void merge_strict(Json& config, const Json& overrides, const std::string& path) {
  ENGINE_CHECK(overrides.is_object(), "config: ", path.empty() ? "the overrides" : path,
               " must be an object, got ", type_name(overrides));
  for (auto it = overrides.begin(); it != overrides.end(); ++it) {
    const std::string key = it.key(), full = join(path, key);
    if (!config.contains(key)) {
      std::string valid;
      for (auto c = config.begin(); c != config.end(); ++c) valid += (valid.empty() ? "" : ", ") + c.key();
      ENGINE_FAIL("config: unknown key '", full, "'; valid keys",
                  path.empty() ? "" : " in '" + path + "'", ": ", valid);
    }
    Json& def = config[key];
    if (def.is_object()) {
      merge_strict(def, it.value(), full);
      continue;
    }
    ENGINE_CHECK(compatible(def, it.value()), "config: '", full, "' must be ", type_name(def),
                 " (default ", def.dump(), "), got ", it.value().dump());
    def = it.value();
  }
}

template <class T>
T cfg_get(const Json& j, const std::string& path, const std::string& key) {
  ENGINE_CHECK(j.is_object() && j.contains(key), "config: missing key '", join(path, key), "'");
  try {
    return j.at(key).get<T>();
  } catch (const std::exception&) {
    ENGINE_FAIL("config: '", join(path, key), "' has the wrong type: ", j.at(key).dump());
  }
}
template int64_t cfg_get<int64_t>(const Json&, const std::string&, const std::string&);
template double cfg_get<double>(const Json&, const std::string&, const std::string&);
template bool cfg_get<bool>(const Json&, const std::string&, const std::string&);
template std::string cfg_get<std::string>(const Json&, const std::string&, const std::string&);
template std::vector<int64_t> cfg_get<std::vector<int64_t>>(const Json&, const std::string&,
                                                            const std::string&);

void require(bool ok, const Json& j, const std::string& path, const std::string& key,
             const std::string& message) {
  if (ok) return;
  ENGINE_FAIL("config: ", join(path, key), " = ", j.contains(key) ? j.at(key).dump() : "?", ": ",
              message);
}

}  // namespace models
