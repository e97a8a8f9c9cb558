// Parameter initialisers. Every parameter is initialised from Philox keyed by the model seed and
// a hash of its full name, so the values do not depend on construction order or on which other
// parameters exist (adding a head does not change the encoder's initial weights).
#pragma once
#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace models {
using engine::DType;
using engine::Shape;
using engine::Tensor;

struct Init {
  enum class Kind {
    zeros,
    ones,
    constant,      // a
    normal,        // N(0, a²)
    trunc_normal,  // N(0, a²) truncated to ±2a (resampled), as timm's trunc_normal_(std=a)
    uniform,       // U(a, b)
    xavier_uniform,  // U(±sqrt(6 / (fan_in + fan_out))); fans from the last two dims
    lecun_normal,    // truncated normal with std sqrt(1 / fan_in) (flax's Dense default)
    orthogonal,      // rows (or columns) orthonormal, of the [rows = numel / last, last] matrix
  };
  Kind kind = Kind::zeros;
  double a = 0, b = 0;

  static Init zeros() { return {Kind::zeros}; }
  static Init ones() { return {Kind::ones}; }
  static Init constant(double v) { return {Kind::constant, v}; }
  static Init normal(double stddev) { return {Kind::normal, stddev}; }
  static Init trunc_normal(double stddev) { return {Kind::trunc_normal, stddev}; }
  static Init uniform(double lo, double hi) { return {Kind::uniform, lo, hi}; }
  static Init xavier_uniform() { return {Kind::xavier_uniform}; }
  static Init lecun_normal() { return {Kind::lecun_normal}; }
  static Init orthogonal() { return {Kind::orthogonal}; }
};

std::string describe(const Init& init);

// Fills `t` (a contiguous CPU f32/f64 tensor, e.g. a view of the flat buffer) per `init`.
// For matrices [.., out, in] the fans are fan_in = in, fan_out = out (stacked experts [E, out, in]
// are initialised as E independent matrices).
void initialize(Tensor& t, const Init& init, uint64_t seed, const std::string& name);

}  // namespace models
