#include "engine/error.h"

#include <cstdlib>

namespace engine::detail {

// The file and line are kept out of the message: users read the message, developers have gdb.
// ENGINE_ERROR_LOCATION=1 appends them for debugging.
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg) {
  static const bool with_location = [] {
    const char* e = std::getenv("ENGINE_ERROR_LOCATION");
    return e && e[0] == '1';
  }();
  if (with_location) throw Error(concat(msg, " [", file, ":", line, "]"));
  throw Error(msg);
}

}  // namespace engine::detail
