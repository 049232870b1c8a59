// The C ABI over deltadit::Bundle: error codes + a per-thread message, no exception crosses it.
#include "deltadit/deltadit.h"

#include <new>
#include <string>

#include "deltadit/deltadit.hpp"

struct ddt_bundle {
  std::shared_ptr<const deltadit::Bundle> bundle;
};
struct ddt_request {
  deltadit::Request request;
};
struct ddt_result {
  deltadit::Result result;
};

namespace {

thread_local std::string last_error;

template <typename F>
ddt_status guard(F&& f) {
  try {
    f();
    last_error.clear();
    return DDT_OK;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return DDT_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    last_error = e.what();
    return DDT_ERROR;
  } catch (...) {
    last_error = "unknown error";
    return DDT_ERROR;
  }
}

ddt_status null_argument(const char* what) {
  last_error = std::string(what) + " | is NULL. Expected: a valid pointer.";
  return DDT_INVALID_ARGUMENT;
}

template <typename T>
ddt_status set_tensor(ddt_request* r, const char* name, int uncond, const T* data, const int64_t* shape, int rank) {
  if (!r || !name || !data || (!shape && rank > 0) || rank < 0 || rank > 8) return null_argument("request, name, data or shape");
  return guard([&] {
    std::vector<int64_t> s(shape, shape + rank);
    int64_t n = 1;
    for (auto d : s) {
      if (d < 0) throw deltadit::Error(std::string("tensor ") + name + " | has a negative dimension. Expected: sizes >= 0.");
      n *= d;
    }
    deltadit::Tensor t;
    if constexpr (std::is_same_v<T, float>) t = deltadit::Tensor::floats(s, std::vector<float>(data, data + n));
    else t = deltadit::Tensor::ints(s, std::vector<int64_t>(data, data + n));
    (uncond ? r->request.uncond : r->request.cond)[name] = std::move(t);
  });
}

}  // namespace

extern "C" {

const char* ddt_last_error(void) { return last_error.c_str(); }

ddt_status ddt_open(const char* path, const char* provider, ddt_bundle** out) {
  if (!path || !out) return null_argument("path or out");
  return guard([&] {
    deltadit::Options o;
    if (provider) o.provider = provider;
    *out = new ddt_bundle{deltadit::Bundle::open(path, o)};
  });
}

void ddt_close(ddt_bundle* bundle) { delete bundle; }

ddt_status ddt_request_new(ddt_request** out) {
  if (!out) return null_argument("out");
  return guard([&] { *out = new ddt_request{}; });
}

void ddt_request_free(ddt_request* request) { delete request; }

ddt_status ddt_request_set_prompt(ddt_request* r, const char* prompt) {
  if (!r || !prompt) return null_argument("request or prompt");
  return guard([&] { r->request.prompt = prompt; });
}

ddt_status ddt_request_set_class(ddt_request* r, int64_t class_id) {
  if (!r) return null_argument("request");
  return guard([&] { r->request.class_id = class_id; });
}

ddt_status ddt_request_set_seed(ddt_request* r, uint64_t seed) {
  if (!r) return null_argument("request");
  return guard([&] { r->request.seed = seed; });
}

ddt_status ddt_request_set_guidance(ddt_request* r, float scale) {
  if (!r) return null_argument("request");
  return guard([&] { r->request.guidance_scale = scale; });
}

ddt_status ddt_request_set_cache(ddt_request* r, int enabled) {
  if (!r) return null_argument("request");
  return guard([&] { r->request.cache = enabled != 0; });
}

ddt_status ddt_request_set_noise(ddt_request* r, const float* data, int64_t count) {
  if (!r || !data || count < 0) return null_argument("request or data");
  return guard([&] { r->request.noise = std::vector<float>(data, data + count); });
}

ddt_status ddt_request_set_float(ddt_request* r, const char* name, int uncond, const float* data, const int64_t* shape, int rank) {
  return set_tensor(r, name, uncond, data, shape, rank);
}

ddt_status ddt_request_set_int64(ddt_request* r, const char* name, int uncond, const int64_t* data, const int64_t* shape, int rank) {
  return set_tensor(r, name, uncond, data, shape, rank);
}

ddt_status ddt_generate(const ddt_bundle* bundle, const ddt_request* request, ddt_result** out) {
  if (!bundle || !request || !out) return null_argument("bundle, request or out");
  return guard([&] { *out = new ddt_result{bundle->bundle->generate(request->request)}; });
}

void ddt_result_free(ddt_result* result) { delete result; }

const float* ddt_result_latents(const ddt_result* result, int64_t* shape, int* rank) {
  if (!result) return nullptr;
  const auto& t = result->result.latents;
  if (rank) *rank = static_cast<int>(t.shape.size());
  if (shape)
    for (size_t i = 0; i < t.shape.size() && i < 8; ++i) shape[i] = t.shape[i];
  return t.f32.data();
}

const float* ddt_result_image(const ddt_result* result, int* height, int* width, int* channels) {
  if (!result || result->result.image.empty()) return nullptr;
  const auto& s = result->result.latents.shape;  // (1, C, H, W)
  if (channels) *channels = static_cast<int>(s[1]);
  if (height) *height = static_cast<int>(s[2]);
  if (width) *width = static_cast<int>(s[3]);
  return result->result.image.data();
}

double ddt_result_segment_seconds(const ddt_result* result) { return result ? result->result.timing.segments_s : 0; }
double ddt_result_total_seconds(const ddt_result* result) { return result ? result->result.timing.total_s : 0; }

}  // extern "C"
