// The bundle's scheduler, as diffusers implements it with the bundle's scheduler_config: DPM-Solver++
// (2nd-order multistep), Euler, DDIM (eta 0), LCM and flow-match Euler. Arithmetic mirrors diffusers'
// float32 torch ops one by one (schedule tables in float64 numpy where diffusers uses numpy), so final
// latents agree with the Python runtime to float rounding.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <random>
#include <string>
#include <vector>

namespace deltadit::detail {

// torch.Generator on the CPU: mt19937 (torch's engine is the reference one) + torch's normal_fill.
class TorchGenerator {
 public:
  explicit TorchGenerator(uint64_t seed) : engine_(static_cast<uint32_t>(seed & 0xffffffffu)) {}
  // torch.randn(n, generator=self) for n >= 16 (float32, contiguous).
  std::vector<float> randn(int64_t n);

 private:
  float uniform() { return static_cast<float>(engine_() & ((1u << 24) - 1)) * (1.0f / (1u << 24)); }
  std::mt19937 engine_;
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  const std::vector<double>& timesteps() const { return timesteps_; }
  bool integer_timesteps() const { return integer_; }
  virtual float init_noise_sigma() const { return 1.0f; }
  // scale_model_input for step i (in place).
  virtual void scale_input(int /*i*/, std::vector<float>& /*x*/) const {}
  // x <- the scheduler's step from x with the model output `out` (same size) at step i.
  virtual void step(int i, const std::vector<float>& out, std::vector<float>& x, TorchGenerator& gen) = 0;

 protected:
  std::vector<double> timesteps_;
  bool integer_ = true;
};

// name: the bundle's sampling.scheduler; config: its scheduler_config (the short name's fixed settings,
// e.g. solver_order 2, apply on top). Throws deltadit::Error for a setting the C++ runtime lacks.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const nlohmann::json& config, int steps);

}  // namespace deltadit::detail
