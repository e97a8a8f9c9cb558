#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

namespace autograd {
namespace {

double projected(const Tensor& y, const std::vector<double>& w) {
  std::vector<double> v = y.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * w[i];
  return s;
}

}  // namespace

GradcheckResult gradcheck(const std::function<Var(const std::vector<Var>&)>& f,
                          const std::vector<Tensor>& inputs, GradcheckOptions opt,
                          std::vector<bool> wrt) {
  if (wrt.empty()) wrt.assign(inputs.size(), true);
  ENGINE_CHECK(wrt.size() == inputs.size(), "gradcheck: wrt has ", wrt.size(), " entries for ",
               inputs.size(), " inputs");
  std::vector<Tensor> xs;
  std::vector<Var> vars;
  for (size_t i = 0; i < inputs.size(); ++i) {
    bool fl = engine::is_floating(inputs[i].dtype());
    Tensor x = fl ? inputs[i].to(DType::f64).clone() : inputs[i];
    xs.push_back(x);
    vars.emplace_back(x, fl && wrt[i]);
  }
  Var y = f(vars);
  ENGINE_CHECK(y.dtype() == DType::f64, "gradcheck: output is ", y.data().describe(),
               "; run the check with f64 inputs");
  Tensor w = Tensor::normal(y.shape(), opt.seed, 0, 0, 1, DType::f64);
  std::vector<double> wv = w.to_vector<double>();
  y.backward(w);

  GradcheckResult res;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!vars[i].requires_grad()) continue;
    Tensor analytic = vars[i].grad().defined() ? vars[i].grad() : Tensor::zeros(xs[i].shape(), DType::f64);
    std::vector<double> a = analytic.to_vector<double>();
    double* p = xs[i].data<double>();
    for (int64_t j = 0; j < xs[i].numel(); ++j) {
      const double orig = p[j];
      double fp, fm;
      {
        NoGradGuard ng;
        p[j] = orig + opt.eps;
        fp = projected(f(vars).data(), wv);
        p[j] = orig - opt.eps;
        fm = projected(f(vars).data(), wv);
        p[j] = orig;
      }
      double num = (fp - fm) / (2 * opt.eps);
      double err = std::abs(num - a[j]);
      if (err > opt.atol + opt.rtol * std::abs(num) || !std::isfinite(a[j])) {
        if (res.ok) {
          std::ostringstream os;
          os << "input " << i << " element " << j << ": analytic " << a[j] << " numeric " << num;
          res.detail = os.str();
        }
        res.ok = false;
      }
      res.max_abs_err = std::max(res.max_abs_err, err);
    }
  }
  return res;
}

}  // namespace autograd
