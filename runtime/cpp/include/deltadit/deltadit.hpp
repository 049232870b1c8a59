// deltadit C++ runtime: open an exported bundle and run its Δ-DiT plan with ONNX Runtime.
//
//   auto bundle = deltadit::Bundle::open("bundles/animals");       // verifies every file first
//   deltadit::Request req;  req.prompt = "a cat";  req.seed = 7;
//   deltadit::Result out = bundle->generate(req);                   // thread-safe: share `bundle`
//
// Errors are deltadit::Error with a one-line message "subject | problem. Expected: fix".
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace deltadit {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A host tensor: float32 or int64, row-major.
struct Tensor {
  enum class DType { f32, i64 };
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  std::vector<float> f32;
  std::vector<int64_t> i64;

  static Tensor floats(std::vector<int64_t> shape, std::vector<float> data);
  static Tensor ints(std::vector<int64_t> shape, std::vector<int64_t> data);
  int64_t numel() const;
};

using Tensors = std::map<std::string, Tensor>;

struct Options {
  std::string provider = "cpu";   // "cpu", "cuda" or "tensorrt" (GPU providers need ORT's GPU build)
  int device_id = 0;
  bool fused_attention = true;    // open each segment's fused-attention graph (ort_graph) where present
  int intra_op_threads = 0;       // 0: ONNX Runtime's default (all cores), as the Python runtime
  std::string ort_library;        // libonnxruntime path; default: $DELTADIT_ORT_LIBRARY, else the build's
};

// One generation. Conditioning: a prompt (bundles with a text encoder), a class id (class-conditioned
// models), or head-input tensors for one image with batch 1 (cond, and uncond when guidance is on):
// PixArt encoder_hidden_states + encoder_attention_mask; DiT class_labels; SD3 encoder_hidden_states +
// pooled_projections.
struct Request {
  std::optional<std::string> prompt;
  std::optional<int64_t> class_id;
  Tensors cond, uncond;
  uint64_t seed = 0;                   // initial noise (torch's CPU generator, see README) unless `noise`
  std::optional<std::vector<float>> noise;  // (C, H, W) standard normal, before init_noise_sigma
  std::optional<float> guidance_scale;      // default: the bundle's
  bool cache = true;                        // false: every step in full (the --no-cache path)
};

struct Timing {
  double total_s = 0;    // the whole generate call
  double segments_s = 0; // inside ONNX Runtime's Run
  int steps = 0;
};

struct Result {
  Tensor latents;             // (1, C, H, W) final latents
  std::vector<float> image;   // (H, W, C) in [0, 1] for pixel-space bundles (decoder "pixels"), else empty
  Timing timing;
};

struct BundleInfo {
  std::string arch, preset, scheduler, conditioning, decoder, precision;
  int steps = 0;
  float guidance_scale = 0;
  std::vector<int64_t> noise_shape;
  bool text_encoder = false;
  int num_classes = 0;  // class-conditioned models: valid ids are [0, num_classes)
};

class Bundle {
 public:
  // Parse and verify the bundle (manifest, paths, sha256 of every file) and create one ONNX Runtime
  // session per segment. Throws deltadit::Error.
  static std::shared_ptr<const Bundle> open(const std::string& path, const Options& options = {});
  virtual ~Bundle() = default;
  virtual const BundleInfo& info() const = 0;
  // Thread-safe: each call keeps its own deltas and scheduler state.
  virtual Result generate(const Request& request) const = 0;
  // Prompt -> (cond, uncond) head inputs with the bundle's text encoder.
  virtual std::pair<Tensors, Tensors> encode_prompt(const std::string& prompt) const = 0;
};

// torch.randn(shape, generator=torch.Generator().manual_seed(seed)) on the CPU, for numel >= 16.
std::vector<float> torch_randn(uint64_t seed, int64_t numel);

// 8-bit PNG of an (H, W, C) image in [0, 1], C = 1 or 3.
void write_png(const std::string& path, const std::vector<float>& image, int height, int width, int channels);

}  // namespace deltadit
