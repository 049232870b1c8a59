// ONNX Runtime, loaded at run time (dlopen + OrtGetApiBase): one session per bundle segment.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "deltadit/deltadit.hpp"
#include "manifest.hpp"

namespace deltadit::detail {

using Value = std::shared_ptr<const Tensor>;
using Values = std::map<std::string, Value>;

struct Graph {  // what a session runs: its tensors as the manifest describes them
  std::string name;
  std::vector<TensorDesc> inputs, outputs;
  std::string path;  // bundle-relative ONNX file
  bool disable_qdq = false;  // run Q/DQ as float ops (exact) where the CPU's int8 kernel saturates
};

class Sessions {
 public:
  Sessions(const std::string& root, const std::vector<Graph>& graphs, const Options& options);
  ~Sessions();
  Sessions(const Sessions&) = delete;
  Sessions& operator=(const Sessions&) = delete;
  // Run graph `index` on `feeds` (by manifest name; extra entries are ignored); the outputs by manifest
  // name. Thread-safe. Adds the time inside ONNX Runtime to *seconds.
  Values run(size_t index, const Values& feeds, double* seconds) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True on x86 CPUs without a VNNI dot product, whose ORT int8 kernel saturates on full 8-bit weights
// (deltadit.runtime.cpu.int8_gemm_saturates).
bool int8_gemm_saturates();

}  // namespace deltadit::detail
