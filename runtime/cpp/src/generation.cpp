#include "generation.hpp"

#include <algorithm>
#include <chrono>

#include "executor.hpp"
#include "schedulers.hpp"

namespace deltadit::detail {
namespace {

int64_t product(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

// Head inputs other than sample / timestep, checked against the bundle: names, batch 1, shapes.
void check_conditioning(const Manifest& m, const Tensors& t, const std::string& which) {
  const auto& head = m.segments.front().inputs;
  for (auto& d : head) {
    if (d.name == "sample" || d.name == "timestep") continue;
    auto it = t.find(d.name);
    if (it == t.end()) throw Error(which + " | lacks head input " + d.name + ". Expected: every conditioning input of the bundle's head.");
    std::vector<int64_t> want = d.concrete(1);
    if (it->second.shape != want || product(want) != it->second.numel()) {
      std::string w;
      for (auto x : want) w += (w.empty() ? "" : ", ") + std::to_string(x);
      throw Error(which + " | " + d.name + " has the wrong shape or size. Expected: [" + w + "] (one image).");
    }
  }
  for (auto& [name, _] : t)
    if (std::none_of(head.begin(), head.end(), [&](auto& d) { return d.name == name; }))
      throw Error(which + " | " + name + " is not an input of the bundle's head. Expected: its conditioning inputs.");
}

// Rows [first; second] along axis 0 (float32 or int64).
Value cat(const Tensor& a, const Tensor& b) {
  auto out = std::make_shared<Tensor>(a);
  out->shape[0] += b.shape[0];
  out->f32.insert(out->f32.end(), b.f32.begin(), b.f32.end());
  out->i64.insert(out->i64.end(), b.i64.begin(), b.i64.end());
  return out;
}

Value timestep_tensor(const Scheduler& s, int i, int batch, double divisor) {
  double t = s.timesteps()[static_cast<size_t>(i)];
  if (s.integer_timesteps() && divisor == 1.0) return std::make_shared<Tensor>(Tensor::ints({batch}, std::vector<int64_t>(batch, int64_t(t))));
  float v = divisor == 1.0 ? float(t) : float(t) / float(divisor);  // FLUX: t / 1000 in the latents' dtype
  return std::make_shared<Tensor>(Tensor::floats({batch}, std::vector<float>(batch, v)));
}

// The model output the scheduler steps with: CFG combination on the first C channels (learned-sigma
// channels dropped); for step_on_cfg_batch the guided rows duplicated to both halves (DiTPipeline).
std::vector<float> guide(const Manifest& m, const Tensor& pred, bool cfg, float scale, int64_t per_image) {
  const Driver& d = m.driver;
  int64_t rows = pred.shape[0], row_size = pred.numel() / rows;
  auto row = [&](int64_t r) { return pred.f32.data() + r * row_size; };  // NCHW: channels [0, C) come first
  if (!cfg) {
    std::vector<float> out;
    for (int64_t r = 0; r < rows; ++r) out.insert(out.end(), row(r), row(r) + per_image);
    return out;
  }
  bool cond_first = d.cfg_order == "cond_first";
  const float* c = row(cond_first ? 0 : 1);
  const float* u = row(cond_first ? 1 : 0);
  std::vector<float> out(static_cast<size_t>(per_image));
  for (int64_t j = 0; j < per_image; ++j) out[j] = u[j] + (c[j] - u[j]) * scale;
  if (d.step_on_cfg_batch) out.insert(out.end(), out.begin(), out.end());
  return out;
}

std::vector<float> initial_noise(const Request& r, int64_t n, TorchGenerator& gen) {
  std::vector<float> drawn = gen.randn(n);  // also when noise is passed: the generator then stands where Python's does
  if (!r.noise) return drawn;
  if (int64_t(r.noise->size()) != n)
    throw Error("noise | has " + std::to_string(r.noise->size()) + " values. Expected: " + std::to_string(n) + " (the bundle's noise_shape).");
  return *r.noise;
}

}  // namespace

void check_drivable(const Manifest& m) {
  if (m.driver.latent_layout != "nchw" || !m.driver.unbatched.empty() || m.driver.embedded_guidance)
    throw Error("bundle | model " + m.arch + " (packed latents, position-id inputs or embedded guidance) is not supported by the "
                "C++ runtime. Expected: a PixArt, DiT or SD3 bundle; run FLUX bundles with the Python runtime.");
  const auto& head = m.segments.front().inputs;
  for (auto name : {"sample", "timestep"})
    if (std::none_of(head.begin(), head.end(), [&](auto& d) { return d.name == name; }))
      throw Error(std::string("bundle | the head has no input ") + name + ". Expected: a bundle written by deltadit-export.");
}

Result denoise(const Manifest& m, const Sessions& sessions, const Request& request, const Tensors& cond, const Tensors& uncond) {
  auto start = std::chrono::steady_clock::now();
  const Driver& d = m.driver;
  float scale = request.guidance_scale.value_or(m.guidance_scale);
  bool cfg = scale > 1.0f && !d.embedded_guidance;
  check_conditioning(m, cond, "cond");
  if (cfg) check_conditioning(m, uncond, "uncond (guidance_scale > 1 needs unconditional inputs)");
  auto scheduler = make_scheduler(m.scheduler, m.scheduler_config, m.steps);
  if (static_cast<int>(scheduler->timesteps().size()) != m.steps)
    throw Error("scheduler | " + std::to_string(scheduler->timesteps().size()) + " timesteps for a plan of " + std::to_string(m.steps) +
                " steps. Expected: a scheduler_config that gives one timestep per step.");
  const int64_t n = product(d.noise_shape);
  TorchGenerator gen(request.seed);
  std::vector<float> x = initial_noise(request, n, gen);
  float sigma = scheduler->init_noise_sigma();
  for (auto& v : x) v = v * sigma;

  Values batch;  // conditioning rows in CFG order
  for (auto& [name, t] : cond) {
    if (!cfg) batch[name] = std::make_shared<Tensor>(t);
    else if (d.cfg_order == "cond_first") batch[name] = cat(t, uncond.at(name));
    else batch[name] = cat(uncond.at(name), t);
  }
  const int rows = cfg ? 2 : 1;
  if (cfg && d.step_on_cfg_batch) x.insert(x.end(), x.begin(), x.end());  // DiTPipeline steps the doubled batch
  std::vector<int64_t> sample_shape{rows};
  sample_shape.insert(sample_shape.end(), d.noise_shape.begin(), d.noise_shape.end());

  Executor executor(m, sessions, request.cache);
  Result result;
  for (int i = 0; i < m.steps; ++i) {
    auto in = std::make_shared<Tensor>();
    in->shape = sample_shape;
    if (d.step_on_cfg_batch) {
      if (cfg) std::copy(x.begin(), x.begin() + n, x.begin() + n);
      in->f32 = x;
    } else {
      in->f32 = x;
      if (cfg) in->f32.insert(in->f32.end(), x.begin(), x.end());
    }
    scheduler->scale_input(i, in->f32);
    Values feeds = batch;
    feeds["sample"] = in;
    feeds["timestep"] = timestep_tensor(*scheduler, i, rows, d.timestep_divisor);
    Values out = executor.step(i, feeds, &result.timing.segments_s);
    std::vector<float> guided = guide(m, *out.at("sample"), cfg, scale, n);
    scheduler->step(i, guided, x, gen);
  }
  x.resize(static_cast<size_t>(n));  // the first half of a doubled batch
  result.latents = Tensor::floats(sample_shape, x);
  result.latents.shape[0] = 1;
  if (m.decoder == "pixels") {  // pixel-space model: image = clamp(latents / 2 + 0.5, 0, 1), HWC
    int64_t c = d.noise_shape[0], hw = n / c;
    result.image.resize(static_cast<size_t>(n));
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t p = 0; p < hw; ++p) result.image[p * c + ch] = std::clamp(x[ch * hw + p] / 2.0f + 0.5f, 0.0f, 1.0f);
  }
  result.timing.steps = m.steps;
  result.timing.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace deltadit::detail
