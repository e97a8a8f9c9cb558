// Warp-level functions of the sim: each lane deposits its value and parameters in the warp's
// exchange buffer and waits; when every live lane named in the mask has arrived, the results of
// all of them are computed at once (semantics of PTX shfl.sync / vote.sync / redux.sync) and they
// become runnable again. Lanes outside the group keep running or waiting elsewhere.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <sstream>
#include <string>

#include "kernels/sim/block.h"

namespace sim::detail {

std::string hex_mask(uint32_t m) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", m);
  return buf;
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::sync: return "__syncwarp";
    case WarpOp::shfl_idx: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::ballot: return "__ballot_sync";
    case WarpOp::any: return "__any_sync";
    case WarpOp::all: return "__all_sync";
    case WarpOp::reduce_add: return "__reduce_add_sync";
    case WarpOp::reduce_min_s:
    case WarpOp::reduce_min_u: return "__reduce_min_sync";
    case WarpOp::reduce_max_s:
    case WarpOp::reduce_max_u: return "__reduce_max_sync";
    case WarpOp::reduce_and: return "__reduce_and_sync";
    case WarpOp::reduce_or: return "__reduce_or_sync";
    case WarpOp::reduce_xor: return "__reduce_xor_sync";
    case WarpOp::activemask: return "__activemask";
  }
  return "?";
}

uint32_t live_lanes(const Block& b, int wi) {
  uint32_t m = 0;
  for (int l = 0; l < 32; ++l) {
    int t = wi * 32 + l;
    if (t < b.nthreads && b.state[size_t(t)] != Done) m |= 1u << l;
  }
  return m;
}

namespace {

uint64_t shuffle_source(const Warp& w, int lane, uint32_t participants) {
  const int width = w.width[lane];
  const int segmask = (32 - width) & 31;  // lanes above the segment bits, as in PTX shfl's c operand
  const int b = w.param[lane] & 31;
  int j = lane;
  bool valid = true;
  switch (w.op[lane]) {
    case WarpOp::shfl_idx: j = (lane & segmask) | (b & ~segmask); break;
    case WarpOp::shfl_up:
      j = lane - b;
      valid = j >= (lane & segmask);
      break;
    case WarpOp::shfl_down:
      j = lane + b;
      valid = j <= ((lane & segmask) | (31 & ~segmask));
      break;
    case WarpOp::shfl_xor:
      j = lane ^ b;
      valid = j <= ((lane & segmask) | (31 & ~segmask));  // lower segments readable, higher not
      break;
    default: break;
  }
  if (!valid) j = lane;
  if (j == lane || (participants >> j & 1)) return w.val[j];
  return ~uint64_t(0);  // source lane does not take part: undefined on the device
}

void complete_group(Block& b, int wi, uint32_t p) {
  Warp& w = b.warps[size_t(wi)];
  const int l0 = std::countr_zero(p);
  const WarpOp op = w.op[l0];
  uint64_t r = 0;
  uint32_t votes = 0;
  for (int l = 0; l < 32; ++l)
    if ((p >> l & 1) && w.val[l]) votes |= 1u << l;
  switch (op) {
    case WarpOp::ballot: r = votes; break;
    case WarpOp::any: r = votes != 0; break;
    case WarpOp::all: r = votes == p; break;
    case WarpOp::reduce_add:
    case WarpOp::reduce_and:
    case WarpOp::reduce_or:
    case WarpOp::reduce_xor:
    case WarpOp::reduce_min_u:
    case WarpOp::reduce_max_u:
    case WarpOp::reduce_min_s:
    case WarpOp::reduce_max_s: {
      uint32_t acc = uint32_t(w.val[l0]);
      for (int l = l0 + 1; l < 32; ++l) {
        if (!(p >> l & 1)) continue;
        uint32_t v = uint32_t(w.val[l]);
        switch (op) {
          case WarpOp::reduce_add: acc += v; break;
          case WarpOp::reduce_and: acc &= v; break;
          case WarpOp::reduce_or: acc |= v; break;
          case WarpOp::reduce_xor: acc ^= v; break;
          case WarpOp::reduce_min_u: acc = std::min(acc, v); break;
          case WarpOp::reduce_max_u: acc = std::max(acc, v); break;
          case WarpOp::reduce_min_s: acc = uint32_t(std::min(int32_t(acc), int32_t(v))); break;
          case WarpOp::reduce_max_s: acc = uint32_t(std::max(int32_t(acc), int32_t(v))); break;
          default: break;
        }
      }
      r = acc;
      break;
    }
    default: break;
  }
  for (int l = 0; l < 32; ++l) {
    if (!(p >> l & 1)) continue;
    switch (op) {
      case WarpOp::shfl_idx:
      case WarpOp::shfl_up:
      case WarpOp::shfl_down:
      case WarpOp::shfl_xor: w.result[l] = shuffle_source(w, l, p); break;
      default: w.result[l] = r; break;
    }
    b.state[size_t(wi * 32 + l)] = Runnable;
    ++b.ready;
  }
  w.arrived &= ~p;
}

}  // namespace

// Completes the group of lanes waiting with `mask` in warp wi if every live lane of the mask has
// arrived. Lanes of one mask must be in the same warp function with the same mask.
void try_complete(Block& b, int wi, uint32_t mask) {
  Warp& w = b.warps[size_t(wi)];
  const uint32_t need = mask & live_lanes(b, wi);
  const uint32_t here = need & w.arrived;
  if (!here) return;
  const int l0 = std::countr_zero(here);
  for (int l = 0; l < 32; ++l) {
    if (!(here >> l & 1)) continue;
    if (w.mask[l] != mask || w.op[l] != w.op[l0] || w.size[l] != w.size[l0]) {
      std::ostringstream os;
      os << "warp " << wi << ": lane " << l0 << " is in " << op_name(w.op[l0]) << "(mask " << hex_mask(w.mask[l0])
         << ") while lane " << l << " is in " << op_name(w.op[l]) << "(mask " << hex_mask(w.mask[l])
         << "); every lane named in a mask must call the same warp function with the same mask";
      throw SimError(os.str());
    }
  }
  if (here == need) complete_group(b, wi, need);
}

// __activemask: once no live lane of warp wi can run any more, the lanes waiting in __activemask
// learn which lanes wait at the same call site.
void resolve_activemask(Block& b, int wi) {
  Warp& w = b.warps[size_t(wi)];
  if (!w.soft) return;
  for (int l = 0; l < 32; ++l) {
    const int t = wi * 32 + l;
    if (t >= b.nthreads) break;
    const uint8_t s = b.state[size_t(t)];
    if (s == NotStarted || s == Runnable || s == Running) return;
  }
  while (w.soft) {
    const uint64_t site = w.val[std::countr_zero(w.soft)];
    uint32_t group = 0;
    for (int l = 0; l < 32; ++l)
      if ((w.soft >> l & 1) && w.val[l] == site) group |= 1u << l;
    for (int l = 0; l < 32; ++l) {
      if (!(group >> l & 1)) continue;
      w.result[l] = group;
      b.state[size_t(wi * 32 + l)] = Runnable;
      ++b.ready;
    }
    w.soft &= ~group;
  }
}

// A lane has exited: groups that waited for it may now be complete.
void on_thread_exit(Block& b, int t) {
  const int wi = t / 32;
  Warp& w = b.warps[size_t(wi)];
  uint32_t pending = w.arrived;
  while (pending) {
    const uint32_t mask = w.mask[std::countr_zero(pending)];
    pending &= ~mask;
    try_complete(b, wi, mask);
    pending &= w.arrived;
  }
  resolve_activemask(b, wi);
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t bits, int size, int param, int width) {
  Block& b = current_block(op_name(op));
  const int self = b.current;
  const int lane = self % 32, wi = self / 32;
  if (!(mask >> lane & 1)) {
    throw SimError(std::string(op_name(op)) + ": the calling lane " + std::to_string(lane) + " of warp " +
                   std::to_string(wi) + " is not in its mask " + hex_mask(mask));
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    throw SimError(std::string(op_name(op)) + ": width " + std::to_string(width) + " is not a power of 2 in [1, 32]");
  Warp& w = b.warps[size_t(wi)];
  w.arrived |= 1u << lane;
  w.op[lane] = op;
  w.size[lane] = uint8_t(size);
  w.mask[lane] = mask;
  w.param[lane] = param;
  w.width[lane] = width;
  w.val[lane] = bits;
  b.state[size_t(self)] = AtWarp;
  try_complete(b, wi, mask);
  resolve_activemask(b, wi);
  if (b.state[size_t(self)] == Runnable) {
    set_current(b, self);  // this lane completed the group: carry on without a switch
  } else {
    wait_in_block(b);
  }
  return w.result[lane];
}

unsigned active_mask(const void* call_site) {
  Block& b = current_block("__activemask");
  const int self = b.current;
  const int lane = self % 32, wi = self / 32;
  Warp& w = b.warps[size_t(wi)];
  w.soft |= 1u << lane;
  w.op[lane] = WarpOp::activemask;
  w.val[lane] = reinterpret_cast<uintptr_t>(call_site);
  b.state[size_t(self)] = AtWarp;
  resolve_activemask(b, wi);
  if (b.state[size_t(self)] == Runnable) {
    set_current(b, self);
  } else {
    wait_in_block(b);
  }
  return unsigned(w.result[lane]);
}

}  // namespace sim::detail
