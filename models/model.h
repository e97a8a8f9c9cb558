// What every model offers besides its forward functions: a family name and the numbers that
// `./train --summary` prints (parameters per block, parameters used per token, forward FLOPs).
#pragma once
#include <string>
#include <vector>

#include "models/module.h"

namespace models {

struct SummaryRow {
  std::string name;         // e.g. "blocks.3 (MoE: expert choice, 16 experts)"
  int64_t params = 0;       // parameters of this part
  int64_t active = 0;       // of those, used by one token (MoE layers: the routed experts only)
  double flops = 0;         // forward FLOPs per sample (2 per multiply-accumulate)
};

class Model : public Module {
 public:
  using Module::Module;
  virtual std::string family() const = 0;
  // One row per top-level part (stem, each block, norms, heads), in order; totals are sums.
  virtual std::vector<SummaryRow> summary() const = 0;
};

// Totals of a summary.
SummaryRow summary_total(const std::vector<SummaryRow>& rows);
// The summary as a text table (parameter counts with thousands separators).
std::string format_summary(const std::string& title, const std::vector<SummaryRow>& rows);

// Forward FLOPs of one transformer block over n tokens (attention GEMMs, scores, FFN GEMMs).
double block_flops(int64_t n, int64_t dim, double ffn_macs_per_token);

}  // namespace models
