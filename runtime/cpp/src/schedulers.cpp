// diffusers' schedulers in C++ (see schedulers.hpp). `float` below is torch float32, `double` numpy float64.
#include "schedulers.hpp"

#include <algorithm>
#include <cmath>

#include "deltadit/deltadit.hpp"

namespace deltadit::detail {
namespace {

using json = nlohmann::json;

// The scheduler config with diffusers' defaults; settings the C++ runtime does not implement are refused.
struct Config {
  const json& data;
  std::string scheduler;

  double num(const std::string& key, double dflt) const {
    auto it = data.find(key);
    if (it == data.end() || it->is_null()) return dflt;
    if (!it->is_number()) fail(key, it->dump(), "a number");
    return it->get<double>();
  }
  std::string str(const std::string& key, const std::string& dflt, const std::vector<std::string>& supported) const {
    auto it = data.find(key);
    std::string v = (it == data.end() || it->is_null()) ? dflt : it->is_string() ? it->get<std::string>() : it->dump();
    if (std::find(supported.begin(), supported.end(), v) == supported.end()) {
      std::string opts;
      for (auto& s : supported) opts += (opts.empty() ? "" : ", ") + s;
      fail(key, v, "one of " + opts);
    }
    return v;
  }
  bool flag(const std::string& key, bool dflt) const {
    auto it = data.find(key);
    if (it == data.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) fail(key, it->dump(), "true or false");
    return it->get<bool>();
  }
  // A setting the C++ runtime implements only at diffusers' default.
  void only_default(const std::string& key, const json& dflt) const {
    auto it = data.find(key);
    if (it != data.end() && !it->is_null() && *it != dflt) fail(key, it->dump(), dflt.dump() + " (the C++ runtime implements only that)");
  }
  [[noreturn]] void fail(const std::string& key, const std::string& got, const std::string& expected) const {
    throw Error("scheduler_config." + key + " | is " + got + " for the " + scheduler + " scheduler. Expected: " + expected + ".");
  }
};

// torch.linspace(start, end, n, dtype=float32): step and values in float, the second half from the end.
std::vector<float> linspace_f32(float start, float end, int n) {
  std::vector<float> out(n);
  float step = n > 1 ? (end - start) / static_cast<float>(n - 1) : 0.0f;
  int halfway = n / 2;
  for (int i = 0; i < n; ++i) out[i] = i < halfway ? start + step * i : end - step * (n - i - 1);
  return out;
}

// np.linspace(start, stop, n) in float64 (endpoint included).
std::vector<double> linspace(double start, double stop, int n, bool endpoint = true) {
  std::vector<double> out(n);
  int div = endpoint ? n - 1 : n;
  double step = div > 0 ? (stop - start) / div : 0.0;
  for (int i = 0; i < n; ++i) out[i] = i * step + start;
  if (endpoint && n > 1) out[n - 1] = stop;
  return out;
}

// alphas_cumprod (float32; torch's cumprod accumulates in double on the CPU).
std::vector<float> alphas_cumprod(const Config& c) {
  int n = static_cast<int>(c.num("num_train_timesteps", 1000));
  std::string schedule = c.str("beta_schedule", "linear", {"linear", "scaled_linear"});
  c.only_default("trained_betas", nullptr);
  c.only_default("rescale_betas_zero_snr", false);
  double bs = c.num("beta_start", 0.0001), be = c.num("beta_end", 0.02);
  std::vector<float> betas = schedule == "linear" ? linspace_f32(float(bs), float(be), n)
                                                  : linspace_f32(float(std::sqrt(bs)), float(std::sqrt(be)), n);
  if (schedule == "scaled_linear")
    for (auto& b : betas) b = b * b;
  std::vector<float> out(n);
  double acc = 1.0;
  for (int i = 0; i < n; ++i) acc *= double(1.0f - betas[i]), out[i] = float(acc);
  return out;
}

std::vector<float> sigmas_of(const std::vector<float>& ac) {  // ((1 - ac) / ac) ** 0.5, float32
  std::vector<float> s(ac.size());
  for (size_t i = 0; i < ac.size(); ++i) s[i] = std::sqrt((1.0f - ac[i]) / ac[i]);
  return s;
}

// np.interp(x, arange(len(fp)), fp) for x inside [0, len - 1].
double interp(double x, const std::vector<float>& fp) {
  int last = static_cast<int>(fp.size()) - 1;
  if (x >= last) return fp[last];
  if (x <= 0) return fp[0];
  int j = static_cast<int>(std::floor(x));
  double slope = double(fp[j + 1]) - double(fp[j]);  // xp spacing 1
  return slope * (x - j) + double(fp[j]);
}

// Integer timesteps of DPM-Solver / DDIM for "linspace" / "leading" / "trailing" spacing.
std::vector<double> spaced(const std::string& spacing, int train, int steps, int offset, bool plus_one) {
  std::vector<double> t;
  int k = plus_one ? steps + 1 : steps;
  if (spacing == "linspace") {
    auto v = linspace(0, train - 1, k);
    for (int i = k - 1; i >= (plus_one ? 1 : 0); --i) t.push_back(std::nearbyint(v[i]));
  } else if (spacing == "leading") {
    int ratio = train / k;
    for (int i = k - 1; i >= (plus_one ? 1 : 0); --i) t.push_back(std::nearbyint(double(i) * ratio) + offset);
  } else {  // trailing
    double ratio = double(train) / steps;  // np.arange(train, 0, -ratio)
    for (int i = 0; i < int(std::ceil(train / ratio)); ++i) t.push_back(std::nearbyint(train - i * ratio) - 1);
  }
  return t;
}

class DPMSolver final : public Scheduler {
 public:
  DPMSolver(const Config& c, int steps) {
    // algorithm_type dpmsolver++ and solver_order 2 are the short name's settings (deltadit.schedulers).
    c.only_default("thresholding", false);
    c.only_default("variance_type", nullptr);
    for (auto k : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "euler_at_final"})
      c.only_default(k, false);
    c.str("solver_type", "midpoint", {"midpoint"});
    prediction_ = c.str("prediction_type", "epsilon", {"epsilon", "v_prediction", "sample"});
    lower_order_final_ = c.flag("lower_order_final", true);
    final_zero_ = c.str("final_sigmas_type", "zero", {"zero", "sigma_min"}) == "zero";
    auto ac = alphas_cumprod(c);
    int train = static_cast<int>(ac.size());
    timesteps_ = spaced(c.str("timestep_spacing", "linspace", {"linspace", "leading", "trailing"}), train, steps,
                        static_cast<int>(c.num("steps_offset", 0)), true);
    auto full = sigmas_of(ac);
    for (double t : timesteps_) sigmas_.push_back(float(interp(t, full)));
    sigmas_.push_back(final_zero_ ? 0.0f : std::sqrt((1.0f - ac[0]) / ac[0]));
  }

  void step(int i, const std::vector<float>& out, std::vector<float>& x, TorchGenerator&) override {
    int n = static_cast<int>(timesteps_.size());
    bool lower_final = i == n - 1 && ((lower_order_final_ && n < 15) || final_zero_);
    prev_ = std::move(last_);
    last_ = convert(i, out, x);
    const std::vector<float>& m0 = last_;
    if (lower_order_nums_ < 1 || lower_final) {
      auto [a_t, s_t] = alpha_sigma(sigmas_[i + 1]);
      auto [a_s, s_s] = alpha_sigma(sigmas_[i]);
      float h = lambda(a_t, s_t) - lambda(a_s, s_s);
      float c1 = s_t / s_s, c2 = a_t * (std::exp(-h) - 1.0f);
      for (size_t j = 0; j < x.size(); ++j) x[j] = c1 * x[j] - c2 * m0[j];
    } else {
      auto [a_t, s_t] = alpha_sigma(sigmas_[i + 1]);
      auto [a_0, s_0] = alpha_sigma(sigmas_[i]);
      auto [a_1, s_1] = alpha_sigma(sigmas_[i - 1]);
      float l_t = lambda(a_t, s_t), l_0 = lambda(a_0, s_0), l_1 = lambda(a_1, s_1);
      float h = l_t - l_0, h_0 = l_0 - l_1;
      float r0 = h_0 / h, inv_r0 = 1.0f / r0;
      float c1 = s_t / s_0, c2 = a_t * (std::exp(-h) - 1.0f), c3 = 0.5f * c2;
      for (size_t j = 0; j < x.size(); ++j) {
        float d1 = inv_r0 * (m0[j] - prev_[j]);
        x[j] = (c1 * x[j] - c2 * m0[j]) - c3 * d1;
      }
    }
    lower_order_nums_ = std::min(lower_order_nums_ + 1, 2);
  }

 private:
  static std::pair<float, float> alpha_sigma(float sigma) {
    float alpha = 1.0f / std::sqrt(sigma * sigma + 1.0f);
    return {alpha, sigma * alpha};
  }
  static float lambda(float alpha, float sigma) { return std::log(alpha) - std::log(sigma); }

  std::vector<float> convert(int i, const std::vector<float>& out, const std::vector<float>& x) const {
    if (prediction_ == "sample") return out;
    auto [a, s] = alpha_sigma(sigmas_[i]);
    std::vector<float> x0(x.size());
    for (size_t j = 0; j < x.size(); ++j)
      x0[j] = prediction_ == "epsilon" ? (x[j] - s * out[j]) / a : a * x[j] - s * out[j];
    return x0;
  }

  std::string prediction_;
  bool lower_order_final_ = true, final_zero_ = true;
  std::vector<float> sigmas_, last_, prev_;
  int lower_order_nums_ = 0;
};

class Euler final : public Scheduler {
 public:
  Euler(const Config& c, int steps) {
    c.only_default("interpolation_type", "linear");
    c.only_default("timestep_type", "discrete");
    for (auto k : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"}) c.only_default(k, false);
    prediction_ = c.str("prediction_type", "epsilon", {"epsilon", "v_prediction", "sample"});
    std::string spacing = c.str("timestep_spacing", "linspace", {"linspace", "leading", "trailing"});
    auto ac = alphas_cumprod(c);
    int train = static_cast<int>(ac.size());
    integer_ = false;
    if (spacing == "linspace") {
      auto v = linspace(0, train - 1, steps);
      for (int i = steps - 1; i >= 0; --i) timesteps_.push_back(float(v[i]));
    } else if (spacing == "leading") {
      int ratio = train / steps, offset = static_cast<int>(c.num("steps_offset", 0));
      for (int i = steps - 1; i >= 0; --i) timesteps_.push_back(float(std::nearbyint(double(i) * ratio)) + offset);
    } else {
      double ratio = double(train) / steps;
      for (int i = 0; i < int(std::ceil(train / ratio)); ++i) timesteps_.push_back(float(std::nearbyint(train - i * ratio)) - 1.0f);
    }
    auto full = sigmas_of(ac);
    for (double t : timesteps_) sigmas_.push_back(float(interp(t, full)));
    bool zero = c.str("final_sigmas_type", "zero", {"zero", "sigma_min"}) == "zero";
    sigmas_.push_back(zero ? 0.0f : full[0]);
    float max = *std::max_element(sigmas_.begin(), sigmas_.end());
    init_sigma_ = spacing == "leading" ? std::sqrt(max * max + 1.0f) : max;
  }

  float init_noise_sigma() const override { return init_sigma_; }
  void scale_input(int i, std::vector<float>& x) const override {
    float d = std::sqrt(sigmas_[i] * sigmas_[i] + 1.0f);
    for (auto& v : x) v = v / d;
  }
  void step(int i, const std::vector<float>& out, std::vector<float>& x, TorchGenerator&) override {
    float sigma = sigmas_[i], dt = sigmas_[i + 1] - sigma, var = sigma * sigma + 1.0f;
    float v_scale = -sigma / std::sqrt(var);
    for (size_t j = 0; j < x.size(); ++j) {
      float pred = prediction_ == "epsilon" ? x[j] - sigma * out[j]
                   : prediction_ == "sample" ? out[j] : out[j] * v_scale + x[j] / var;
      float derivative = (x[j] - pred) / sigma;
      x[j] = x[j] + derivative * dt;
    }
  }

 private:
  std::string prediction_;
  std::vector<float> sigmas_;
  float init_sigma_ = 1.0f;
};

// DDIM (eta 0) and LCM share the alphas_cumprod-indexed update.
class DDIM final : public Scheduler {
 public:
  DDIM(const Config& c, int steps, bool lcm) : lcm_(lcm) {
    c.only_default("thresholding", false);
    prediction_ = c.str("prediction_type", "epsilon", {"epsilon", "v_prediction", "sample"});
    clip_ = c.flag("clip_sample", !lcm) ? float(c.num("clip_sample_range", 1.0)) : 0.0f;
    ac_ = alphas_cumprod(c);
    final_ = c.flag("set_alpha_to_one", true) ? 1.0f : ac_[0];
    int train = static_cast<int>(ac_.size());
    if (lcm) {
      scaling_ = float(c.num("timestep_scaling", 10.0));
      int original = static_cast<int>(c.num("original_inference_steps", 50));
      if (steps > original || original > train) c.fail("original_inference_steps", std::to_string(original), "at least the plan's steps");
      int k = train / original;
      std::vector<double> origin;
      for (int i = original; i >= 1; --i) origin.push_back(double(i) * k - 1);
      for (double idx : linspace(0, double(origin.size()), steps, false)) timesteps_.push_back(origin[size_t(std::floor(idx))]);
    } else {
      timesteps_ = spaced(c.str("timestep_spacing", "leading", {"linspace", "leading", "trailing"}), train, steps,
                          static_cast<int>(c.num("steps_offset", 0)), false);
    }
    stride_ = train / steps;
  }

  void step(int i, const std::vector<float>& out, std::vector<float>& x, TorchGenerator& gen) override {
    int t = static_cast<int>(timesteps_[i]);
    int prev = lcm_ ? (i + 1 < int(timesteps_.size()) ? int(timesteps_[i + 1]) : t) : t - stride_;
    float a_t = ac_[t], a_prev = prev >= 0 ? ac_[prev] : final_;
    float b_t = 1.0f - a_t, sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    std::vector<float> x0(x.size()), eps(x.size());
    for (size_t j = 0; j < x.size(); ++j) {
      if (prediction_ == "epsilon") x0[j] = (x[j] - sb * out[j]) / sa, eps[j] = out[j];
      else if (prediction_ == "sample") x0[j] = out[j], eps[j] = (x[j] - sa * out[j]) / sb;
      else x0[j] = sa * x[j] - sb * out[j], eps[j] = sa * out[j] + sb * x[j];
      if (clip_ > 0) x0[j] = std::min(std::max(x0[j], -clip_), clip_);
    }
    if (lcm_) return lcm_step(i, t, a_prev, x0, x, gen);
    float dir = std::sqrt(1.0f - a_prev - 0.0f), sp = std::sqrt(a_prev);
    for (size_t j = 0; j < x.size(); ++j) x[j] = sp * x0[j] + dir * eps[j];
  }

 private:
  void lcm_step(int i, int t, float a_prev, const std::vector<float>& x0, std::vector<float>& x, TorchGenerator& gen) {
    float scaled = float(t) * scaling_, c_skip = 0.25f / (scaled * scaled + 0.25f);
    float c_out = scaled / std::sqrt(scaled * scaled + 0.25f);
    for (size_t j = 0; j < x.size(); ++j) x[j] = c_out * x0[j] + c_skip * x[j];  // denoised
    if (i == int(timesteps_.size()) - 1) return;
    std::vector<float> noise = gen.randn(static_cast<int64_t>(x.size()));
    float sa = std::sqrt(a_prev), sb = std::sqrt(1.0f - a_prev);
    for (size_t j = 0; j < x.size(); ++j) x[j] = sa * x[j] + sb * noise[j];
  }

  bool lcm_;
  std::string prediction_;
  float clip_ = 0, final_ = 1, scaling_ = 10;
  std::vector<float> ac_;
  int stride_ = 1;
};

class FlowEuler final : public Scheduler {
 public:
  FlowEuler(const Config& c, int steps) {
    c.only_default("use_dynamic_shifting", false);  // FLUX's resolution-dependent shift: not in the C++ runtime
    for (auto k : {"invert_sigmas", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling"})
      c.only_default(k, false);
    c.only_default("shift_terminal", nullptr);
    int train = static_cast<int>(c.num("num_train_timesteps", 1000));
    double shift = c.num("shift", 1.0);
    integer_ = false;
    // __init__: sigmas = shifted(linspace(1, N, N) / N) in float32; their max and min.
    auto shifted32 = [&](float s) { return float(shift) * s / (1.0f + float(shift - 1.0) * s); };
    double sigma_max = shifted32(float(float(train) / float(train)));
    double sigma_min = shifted32(float(1.0f) / float(train));
    // set_timesteps: linspace over t = sigma * N, back to sigmas, shifted again (float64), then float32.
    for (double t : linspace(sigma_max * train, sigma_min * train, steps)) {
      double s = t / train;
      sigmas_.push_back(float(shift * s / (1 + (shift - 1) * s)));
    }
    for (float s : sigmas_) timesteps_.push_back(s * float(train));
    sigmas_.push_back(0.0f);
  }

  void step(int i, const std::vector<float>& out, std::vector<float>& x, TorchGenerator&) override {
    float dt = sigmas_[i + 1] - sigmas_[i];
    for (size_t j = 0; j < x.size(); ++j) x[j] = x[j] + dt * out[j];
  }

 private:
  std::vector<float> sigmas_;
};

}  // namespace

std::vector<float> TorchGenerator::randn(int64_t n) {
  if (n < 16) throw Error("noise | " + std::to_string(n) + " values: the C++ runtime draws torch's normal noise for 16 or more. "
                          "Expected: pass the noise in.");
  std::vector<float> data(static_cast<size_t>(n));
  for (auto& v : data) v = uniform();
  auto fill16 = [](float* d) {  // Box-Muller on 8 pairs, as torch's normal_fill_16
    for (int j = 0; j < 8; ++j) {
      float u1 = 1.0f - d[j], u2 = d[j + 8];
      float radius = std::sqrt(-2.0f * std::log(u1));
      float theta = float(2.0 * M_PI * double(u2));
      d[j] = radius * std::cos(theta);
      d[j + 8] = radius * std::sin(theta);
    }
  };
  for (int64_t i = 0; i + 16 <= n; i += 16) fill16(data.data() + i);
  if (n % 16 != 0) {  // torch redraws the last 16 values
    float* tail = data.data() + n - 16;
    for (int j = 0; j < 16; ++j) tail[j] = uniform();
    fill16(tail);
  }
  return data;
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const json& config, int steps) {
  Config c{config, name};
  if (name == "dpm-solver++") return std::make_unique<DPMSolver>(c, steps);
  if (name == "euler") return std::make_unique<Euler>(c, steps);
  if (name == "ddim") return std::make_unique<DDIM>(c, steps, false);
  if (name == "lcm") return std::make_unique<DDIM>(c, steps, true);
  if (name == "flow-euler") return std::make_unique<FlowEuler>(c, steps);
  throw Error("scheduler | '" + name + "' is unknown. Expected: one of dpm-solver++, euler, ddim, lcm, flow-euler.");
}

}  // namespace deltadit::detail
