// deltadit::Bundle: a verified bundle with one ONNX Runtime session per segment, shared by many threads.
#include <mutex>

#include "bundle_files.hpp"
#include "deltadit/deltadit.hpp"
#include "generation.hpp"
#include "ort.hpp"
#include "schedulers.hpp"
#include "tokenizer.hpp"

namespace deltadit {

Tensor Tensor::floats(std::vector<int64_t> shape, std::vector<float> data) {
  Tensor t;
  t.shape = std::move(shape);
  t.f32 = std::move(data);
  return t;
}

Tensor Tensor::ints(std::vector<int64_t> shape, std::vector<int64_t> data) {
  Tensor t;
  t.dtype = DType::i64;
  t.shape = std::move(shape);
  t.i64 = std::move(data);
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::vector<float> torch_randn(uint64_t seed, int64_t numel) { return detail::TorchGenerator(seed).randn(numel); }

namespace detail {
namespace {

const Manifest& drivable(const Manifest& m) {
  check_drivable(m);  // before any session is made
  return m;
}

std::vector<Graph> graphs(const Manifest& m, const Options& o) {
  std::vector<Graph> out;
  // Not under TensorRT, which would hand the fused contrib op back to CUDA and split the graph.
  bool fused = o.fused_attention && o.provider != "tensorrt";
  bool emulate = o.provider == "cpu" && m.int8_weight_bits == 8 && int8_gemm_saturates();
  for (auto& s : m.segments)
    out.push_back({s.name, s.inputs, s.outputs, fused && !s.ort_graph.empty() ? s.ort_graph : s.files[0].path,
                   emulate && s.precision == "int8"});
  if (m.text_encoder.present)
    out.push_back({"text_encoder", m.text_encoder.inputs, m.text_encoder.outputs, m.text_encoder.files[0].path, false});
  return out;
}

class BundleImpl final : public Bundle {
 public:
  BundleImpl(const std::string& root, const Options& options)
      : root_(root), m_(read_bundle(root)), sessions_(root, graphs(drivable(m_), options), options) {
    info_ = {m_.arch, m_.preset, m_.scheduler, m_.driver.conditioning, m_.decoder, m_.precision, m_.steps,
             m_.guidance_scale, m_.driver.noise_shape, m_.text_encoder.present, 0};
    if (m_.driver.conditioning == "class") info_.num_classes = m_.model_config.value("num_embeds_ada_norm", 0);
    const TextEncoderInfo& te = m_.text_encoder;
    if (te.present)
      tokenizer_ = WordTokenizer(inside_or_throw(root, te.tokenizer.path), {te.max_length, te.pad_id, te.eos_id, te.unk_id, te.lowercase});
  }

  const BundleInfo& info() const override { return info_; }

  std::pair<Tensors, Tensors> encode_prompt(const std::string& prompt) const override {
    if (!m_.text_encoder.present)
      throw Error("prompt | bundle " + root_ + " carries no text encoder. Expected: a bundle exported with --text-encoder, "
                  "or conditioning tensors (encoder_hidden_states + encoder_attention_mask).");
    std::call_once(negative_once_, [&] { negative_ = encode(""); });  // the negative prompt: same every call
    return {encode(prompt), negative_};
  }

  Result generate(const Request& r) const override {
    int given = (r.prompt ? 1 : 0) + (r.class_id ? 1 : 0) + (r.cond.empty() ? 0 : 1);
    if (given != 1) throw Error("request | gives " + std::to_string(given) + " kinds of conditioning. Expected: exactly one of "
                                "prompt, class_id or cond tensors.");
    if (r.prompt) {
      auto [cond, uncond] = encode_prompt(*r.prompt);
      return denoise(m_, sessions_, r, cond, uncond);
    }
    if (r.class_id) {
      if (info_.num_classes <= 0) throw Error("class | bundle " + root_ + " is not class-conditioned. Expected: --prompt or conditioning tensors.");
      if (*r.class_id < 0 || *r.class_id >= info_.num_classes)
        throw Error("class | " + std::to_string(*r.class_id) + " is out of range. Expected: an id in [0, " + std::to_string(info_.num_classes) + ").");
      Tensors cond{{"class_labels", Tensor::ints({1}, {*r.class_id})}};
      Tensors uncond{{"class_labels", Tensor::ints({1}, {info_.num_classes})}};  // the null class
      return denoise(m_, sessions_, r, cond, uncond);
    }
    return denoise(m_, sessions_, r, r.cond, r.uncond);
  }

 private:
  Tensors encode(const std::string& prompt) const {
    auto [ids, mask] = tokenizer_.encode(prompt);
    const int64_t len = static_cast<int64_t>(ids.size());
    Values feeds{{"input_ids", std::make_shared<Tensor>(Tensor::ints({1, len}, ids))},
                 {"attention_mask", std::make_shared<Tensor>(Tensor::ints({1, len}, mask))}};
    Values out = sessions_.run(m_.segments.size(), feeds, nullptr);
    Tensors head;
    for (auto& [input, tensor] : m_.text_encoder.head_inputs) head[input] = tensor == "attention_mask" || tensor == "input_ids" ? *feeds.at(tensor) : *out.at(tensor);
    return head;
  }

  std::string root_;
  Manifest m_;
  Sessions sessions_;
  BundleInfo info_;
  WordTokenizer tokenizer_;
  mutable std::once_flag negative_once_;
  mutable Tensors negative_;
};

}  // namespace
}  // namespace detail

std::shared_ptr<const Bundle> Bundle::open(const std::string& path, const Options& options) {
  std::string root = path;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  return std::make_shared<detail::BundleImpl>(root, options);
}

}  // namespace deltadit
