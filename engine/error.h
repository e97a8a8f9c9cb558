// One exception type for the whole engine. Messages name the op, the shapes and what was
// expected, so a user sees one clear line instead of a crash.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace engine {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace engine

// CHECK(cond, parts...): throws engine::Error("parts...") when cond is false.
// The parts are streamed, so shapes (which have operator<<) can be passed directly.
#define ENGINE_CHECK(cond, ...)                                                          \
  do {                                                                                   \
    if (!(cond)) [[unlikely]]                                                            \
      ::engine::detail::throw_error(__FILE__, __LINE__, ::engine::detail::concat(__VA_ARGS__)); \
  } while (0)

#define ENGINE_FAIL(...) \
  ::engine::detail::throw_error(__FILE__, __LINE__, ::engine::detail::concat(__VA_ARGS__))
