// ONNX Runtime sessions. ORT versions its exported symbols per release (VERS_1.32.0), so the library is
// dlopen'ed and its API taken from OrtGetApiBase: one binary runs on any ORT with C API >= ORT_API_VERSION.
#define ORT_API_MANUAL_INIT
#include "ort.hpp"

#include <dlfcn.h>
#include <onnxruntime_cxx_api.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#ifndef DELTADIT_DEFAULT_ORT_LIBRARY
#define DELTADIT_DEFAULT_ORT_LIBRARY "libonnxruntime.so.1"
#endif

namespace deltadit::detail {
namespace {

std::string library_path(const Options& o) {
  if (!o.ort_library.empty()) return o.ort_library;
  if (const char* env = std::getenv("DELTADIT_ORT_LIBRARY")) return env;
  return DELTADIT_DEFAULT_ORT_LIBRARY;
}

// Load the library and the API once per process; later bundles reuse them (a second library path is ignored).
Ort::Env& env(const Options& o) {
  static std::once_flag once;
  static std::unique_ptr<Ort::Env> instance;
  static std::string failure;
  std::call_once(once, [&] {
    std::string path = library_path(o);
    void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      failure = "onnxruntime " + path + " | cannot be loaded (" + ::dlerror() + "). Expected: Options::ort_library or "
                "DELTADIT_ORT_LIBRARY naming libonnxruntime.so.1 of ONNX Runtime >= 1.29.";
      return;
    }
    auto get_base = reinterpret_cast<const OrtApiBase* (*)()>(::dlsym(lib, "OrtGetApiBase"));
    const OrtApi* api = get_base ? get_base()->GetApi(ORT_API_VERSION) : nullptr;
    if (!api) {
      failure = "onnxruntime " + path + " | lacks C API " + std::to_string(ORT_API_VERSION) + " (it is version " +
                (get_base ? get_base()->GetVersionString() : "unknown") + "). Expected: ONNX Runtime >= 1.29.";
      return;
    }
    Ort::InitApi(api);
    instance = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "deltadit");
    // One CPU arena for every CPU session of the process, grown by what is asked (as the Python runner's
    // memory_arena="shared"): per-session arenas each keep their segment's largest activations.
    // Already registered (an Env shared with this process's Python onnxruntime): that one serves.
    try {
      Ort::ArenaCfg arena(0, /*kSameAsRequested*/ 1, -1, -1);
      instance->CreateAndRegisterAllocator(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault), arena);
    } catch (const Ort::Exception&) {
    }
  });
  if (!instance) throw Error(failure);
  return *instance;
}

ONNXTensorElementDataType element_type(const std::string& dtype, const std::string& where) {
  if (dtype == "float32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (dtype == "int64") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  if (dtype == "int32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (dtype == "bool") return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  throw Error(where + " | dtype " + dtype + " is not supported by the C++ runtime. Expected: an fp32 or int8 bundle "
              "(float32 / int64 / int32 / bool tensors).");
}

void append_provider(Ort::SessionOptions& so, const Options& o) {
  if (o.provider == "cpu") return;
  if (o.provider != "cuda" && o.provider != "tensorrt")
    throw Error("provider | '" + o.provider + "' is unknown. Expected: cpu, cuda or tensorrt.");
  const OrtApi& api = Ort::GetApi();
  std::string id = std::to_string(o.device_id);
  const char* keys[] = {"device_id"};
  const char* vals[] = {id.c_str()};
  try {
    if (o.provider == "tensorrt") {
      OrtTensorRTProviderOptionsV2* trt = nullptr;
      Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
      std::unique_ptr<OrtTensorRTProviderOptionsV2, void (*)(OrtTensorRTProviderOptionsV2*)> hold(trt, api.ReleaseTensorRTProviderOptions);
      Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt, keys, vals, 1));
      so.AppendExecutionProvider_TensorRT_V2(*trt);
    }
    OrtCUDAProviderOptionsV2* cuda = nullptr;  // TensorRT falls back to CUDA for what it does not take
    Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
    std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2*)> hold(cuda, api.ReleaseCUDAProviderOptions);
    Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, keys, vals, 1));
    so.AppendExecutionProvider_CUDA_V2(*cuda);
  } catch (const Ort::Exception& e) {
    throw Error("provider | " + o.provider + " is not available in this onnxruntime (" + e.what() +
                "). Expected: ONNX Runtime's GPU build (onnxruntime-gpu) with CUDA / TensorRT installed.");
  }
}

// Copy `t` into `buf` as `dtype` (the bundle's input dtypes are the contract, as in the Python runner).
void convert(const Tensor& t, const std::string& dtype, std::vector<uint8_t>& buf) {
  int64_t n = t.numel();
  auto at = [&](int64_t i) -> double { return t.dtype == Tensor::DType::f32 ? double(t.f32[i]) : double(t.i64[i]); };
  if (dtype == "float32") {
    buf.resize(n * sizeof(float));
    auto* p = reinterpret_cast<float*>(buf.data());
    for (int64_t i = 0; i < n; ++i) p[i] = t.dtype == Tensor::DType::f32 ? t.f32[i] : float(t.i64[i]);
  } else if (dtype == "int64") {
    buf.resize(n * sizeof(int64_t));
    auto* p = reinterpret_cast<int64_t*>(buf.data());
    for (int64_t i = 0; i < n; ++i) p[i] = t.dtype == Tensor::DType::i64 ? t.i64[i] : int64_t(t.f32[i]);
  } else if (dtype == "int32") {
    buf.resize(n * sizeof(int32_t));
    auto* p = reinterpret_cast<int32_t*>(buf.data());
    for (int64_t i = 0; i < n; ++i) p[i] = int32_t(at(i));
  } else {  // bool
    buf.resize(n);
    for (int64_t i = 0; i < n; ++i) buf[i] = at(i) != 0;
  }
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << (s[i] == kBatch ? std::string("'batch'") : std::to_string(s[i]));
  return o.str() + "]";
}

}  // namespace

struct Sessions::Impl {
  struct Entry {
    Graph graph;
    std::unique_ptr<Ort::Session> session;
    std::vector<size_t> used;  // indices into graph.inputs the graph takes (the exporter drops unused ones)
  };
  std::vector<Entry> entries;
  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
};

Sessions::Sessions(const std::string& root, const std::vector<Graph>& graphs, const Options& options) {
  Ort::Env& e = env(options);  // loads the library: before any other Ort:: call
  impl_ = std::make_unique<Impl>();
  for (const Graph& g : graphs) {
    for (auto& t : g.inputs) element_type(t.dtype, "input " + t.name + " of " + g.name);
    for (auto& t : g.outputs)
      if (t.dtype != "float32" && t.dtype != "int64") element_type("unsupported " + t.dtype, "output " + t.name + " of " + g.name);
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    if (options.intra_op_threads > 0) so.SetIntraOpNumThreads(options.intra_op_threads);
    if (g.disable_qdq) so.AddConfigEntry("session.disable_quant_qdq", "1");
    if (options.provider == "cpu") so.AddConfigEntry("session.use_env_allocators", "1");
    append_provider(so, options);
    Impl::Entry entry{g, nullptr, {}};
    try {
      entry.session = std::make_unique<Ort::Session>(e, (root + "/" + g.path).c_str(), so);
    } catch (const Ort::Exception& ex) {
      throw Error("segment " + g.name + " | ONNX Runtime cannot open " + g.path + " (" + ex.what() +
                  "). Expected: a graph this ONNX Runtime supports (re-export with a lower --opset).");
    }
#if defined(__GLIBC__)
    ::malloc_trim(0);  // the FP32 weights an INT8 session folded into int8 ones leave the RSS
#endif
    Ort::AllocatorWithDefaultOptions alloc;
    std::set<std::string> names;
    for (size_t i = 0; i < entry.session->GetInputCount(); ++i) names.insert(entry.session->GetInputNameAllocated(i, alloc).get());
    for (size_t i = 0; i < g.inputs.size(); ++i)
      if (names.count(g.inputs[i].name)) entry.used.push_back(i);
    impl_->entries.push_back(std::move(entry));
  }
}

Sessions::~Sessions() = default;

Values Sessions::run(size_t index, const Values& feeds, double* seconds) const {
  const Impl::Entry& entry = impl_->entries.at(index);
  const Graph& g = entry.graph;
  std::vector<std::string> problems;
  int64_t batch = -1;
  for (auto& d : g.inputs) {
    auto it = feeds.find(d.name);
    if (it == feeds.end()) throw Error("segment " + g.name + " | input " + d.name + " was not given. Expected: the head's inputs.");
    const auto& got = it->second->shape;
    bool ok = got.size() == d.shape.size();
    for (size_t i = 0; ok && i < got.size(); ++i) ok = d.shape[i] == kBatch || d.shape[i] == got[i];
    if (!ok) problems.push_back("input " + d.name + " of segment " + g.name + " | shape " + shape_str(got) + " does not match the "
                                "bundle. Expected: " + shape_str(d.shape) + " (the bundle was exported for this shape).");
    else if (!d.shape.empty() && d.shape[0] == kBatch) {
      if (batch >= 0 && batch != got[0]) problems.push_back("segment " + g.name + " | inputs disagree on the batch size.");
      batch = got[0];
    }
  }
  if (!problems.empty()) {
    std::string msg = problems[0];
    for (size_t i = 1; i < problems.size(); ++i) msg += "\n" + problems[i];
    throw Error(msg);
  }
  std::vector<std::vector<uint8_t>> buffers(entry.used.size());
  std::vector<Ort::Value> in;
  std::vector<const char*> in_names;
  for (size_t k = 0; k < entry.used.size(); ++k) {
    const TensorDesc& d = g.inputs[entry.used[k]];
    const Tensor& t = *feeds.at(d.name);
    void* data;
    size_t bytes;
    if (d.dtype == "float32" && t.dtype == Tensor::DType::f32) {
      data = const_cast<float*>(t.f32.data()), bytes = t.f32.size() * sizeof(float);  // ORT does not write inputs
    } else if (d.dtype == "int64" && t.dtype == Tensor::DType::i64) {
      data = const_cast<int64_t*>(t.i64.data()), bytes = t.i64.size() * sizeof(int64_t);
    } else {
      convert(t, d.dtype, buffers[k]);
      data = buffers[k].data(), bytes = buffers[k].size();
    }
    in.push_back(Ort::Value::CreateTensor(impl_->cpu, data, bytes, t.shape.data(), t.shape.size(), element_type(d.dtype, d.name)));
    in_names.push_back(d.name.c_str());
  }
  Values out;
  std::vector<Ort::Value> out_vals;
  std::vector<const char*> out_names;
  for (auto& d : g.outputs) {
    auto t = std::make_shared<Tensor>();
    t->shape = d.concrete(batch);
    int64_t n = t->numel();
    if (d.dtype == "float32") {
      t->f32.resize(n);
      out_vals.push_back(Ort::Value::CreateTensor<float>(impl_->cpu, t->f32.data(), n, t->shape.data(), t->shape.size()));
    } else {
      t->dtype = Tensor::DType::i64;
      t->i64.resize(n);
      out_vals.push_back(Ort::Value::CreateTensor<int64_t>(impl_->cpu, t->i64.data(), n, t->shape.data(), t->shape.size()));
    }
    out_names.push_back(d.onnx_name.c_str());
    out[d.name] = t;
  }
  auto start = std::chrono::steady_clock::now();
  try {
    entry.session->Run(Ort::RunOptions{nullptr}, in_names.data(), in.data(), in.size(), out_names.data(), out_vals.data(),
                       out_vals.size());
  } catch (const Ort::Exception& ex) {
    throw Error("segment " + g.name + " | ONNX Runtime failed (" + std::string(ex.what()) + ").");
  }
  if (seconds) *seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

bool int8_gemm_saturates() {
#if defined(__x86_64__) || defined(__i386__)
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::string w;
    while (words >> w)
      if (w == "avx512_vnni" || w == "avx_vnni" || w == "amx_int8") return false;
    return true;
  }
  return false;  // unknown: assume a current CPU
#else
  return false;  // ARM64 kernels accumulate in 32 bits
#endif
}

}  // namespace deltadit::detail
