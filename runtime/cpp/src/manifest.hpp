// The bundle manifest (format 2) as typed, validated structs: the C++ twin of deltadit/manifest.py.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace deltadit::detail {

constexpr int kFormatVersion = 2;
constexpr int64_t kBatch = -1;  // the "batch" axis in a TensorDesc shape

struct FileEntry {
  std::string path, sha256;
};

struct TensorDesc {
  std::string name, dtype, onnx_name;  // onnx_name: the graph's output name (defaults to name)
  std::vector<int64_t> shape;          // kBatch on axis 0 where the batch goes
  std::vector<int64_t> concrete(int64_t batch) const;
};

struct SegmentInfo {
  std::string name, kind, precision;
  int start = -1, stop = -1;  // block range of a group
  std::vector<TensorDesc> inputs, outputs;
  std::vector<FileEntry> files;  // files[0]: the standard graph
  std::string ort_graph;         // the fused-attention graph, or empty
};

struct StepAction {
  bool cached = false;
  std::pair<int, int> range{0, 0};                 // cached range [s, e)
  std::vector<std::pair<int, int>> record;         // ranges a full step records
};

struct Driver {
  std::vector<std::string> streams, unbatched;
  std::string conditioning, cfg_order, latent_layout;
  bool step_on_cfg_batch = false, embedded_guidance = false, learned_sigma = false;
  double timestep_divisor = 1.0;
  std::vector<int64_t> noise_shape;
};

struct TextEncoderInfo {
  bool present = false;
  std::vector<FileEntry> files;
  FileEntry tokenizer;
  int max_length = 0;
  int64_t pad_id = 0, eos_id = -1, unk_id = -1;  // -1: null
  bool lowercase = true;
  std::vector<TensorDesc> inputs, outputs;
  std::vector<std::pair<std::string, std::string>> head_inputs;  // head input -> encoder tensor
};

struct Manifest {
  std::string arch, preset, decoder, precision;
  nlohmann::json model_config;
  int latent_side = 0, text_len = 0, int8_weight_bits = 0;
  std::string scheduler;
  nlohmann::json scheduler_config;
  float guidance_scale = 0;
  int steps = 0, num_blocks = 0;
  Driver driver;
  std::vector<StepAction> plan;
  std::vector<SegmentInfo> segments;  // head, groups in block order, tail
  std::vector<std::pair<std::string, FileEntry>> engine_files;
  TextEncoderInfo text_encoder;

  // Every hashed file with its owner (segment name, "engines" or "text_encoder").
  std::vector<std::pair<std::string, FileEntry>> files() const;
};

// Parse and validate manifest.json's object; throws deltadit::Error naming the field.
Manifest parse_manifest(const nlohmann::json& data);

// "manifest field <where> | <problem>. Expected: <expected> (...)" as deltadit.jsonfields.bad.
[[noreturn]] void bad(const std::string& where, const std::string& problem, const std::string& expected);

// A bundle-relative path: POSIX, relative, normalised, no '..', no empty or hidden parts.
const std::string& check_relative_path(const std::string& path, const std::string& where);

}  // namespace deltadit::detail
