#include "models/model.h"

#include <cstdio>
#include <sstream>

namespace models {

SummaryRow summary_total(const std::vector<SummaryRow>& rows) {
  SummaryRow t;
  t.name = "total";
  for (const auto& r : rows) {
    t.params += r.params;
    t.active += r.active;
    t.flops += r.flops;
  }
  return t;
}

namespace {
std::string thousands(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return v < 0 ? "-" + out : out;
}
std::string gflops(double f) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f", f / 1e9);
  return b;
}
}  // namespace

std::string format_summary(const std::string& title, const std::vector<SummaryRow>& rows) {
  size_t w = 5;
  for (const auto& r : rows) w = std::max(w, r.name.size());
  std::ostringstream s;
  char line[512];
  s << title << "\n";
  std::snprintf(line, sizeof line, "  %-*s %15s %15s %12s\n", int(w), "part", "parameters",
                "active/token", "GFLOPs/sample");
  s << line;
  auto row = [&](const SummaryRow& r) {
    std::snprintf(line, sizeof line, "  %-*s %15s %15s %12s\n", int(w), r.name.c_str(),
                  thousands(r.params).c_str(), thousands(r.active).c_str(), gflops(r.flops).c_str());
    s << line;
  };
  for (const auto& r : rows) row(r);
  s << "  " << std::string(w + 46, '-') << "\n";
  row(summary_total(rows));
  return s.str();
}

double block_flops(int64_t n, int64_t dim, double ffn_macs_per_token) {
  const double N = double(n), D = double(dim);
  const double proj = N * 4 * D * D;      // qkv and output projections
  const double scores = 2 * N * N * D;    // q·kᵀ and p·v
  return 2 * (proj + scores + N * ffn_macs_per_token);
}

}  // namespace models
