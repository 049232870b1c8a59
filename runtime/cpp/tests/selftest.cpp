// deltadit_selftest BUNDLE THREADS [NAME:D1xD2...]...: one bundle shared by THREADS concurrent generations
// must give, for each job, exactly the single-threaded latents; plus C ABI error checks. Conditioning: a
// prompt (bundles with a text encoder), a class id, or seeded tensors (the NAME:shape arguments, batch 1
// left out). Prints "ok" and exits 0, else the failure and exits 1. Run under ASan + UBSan by the suite.
// deltadit_selftest --tokenize TOKENIZER_JSON L PAD EOS UNK PROMPT...: one "ids | mask" line per prompt.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>

#include "../src/tokenizer.hpp"
#include "deltadit/deltadit.h"
#include "deltadit/deltadit.hpp"

namespace {

struct Job {
  uint64_t seed;
  bool cache;
};

// Tensors for the head's conditioning inputs, filled from the job's seed (class labels: small ids).
deltadit::Request request_for(const deltadit::Bundle& b, const Job& job, const std::vector<std::pair<std::string, std::vector<int64_t>>>& inputs) {
  deltadit::Request r;
  r.seed = job.seed;
  r.cache = job.cache;
  const auto& info = b.info();
  if (info.text_encoder) {
    r.prompt = job.seed % 2 ? "a cat" : "a photo of a dog";
  } else if (info.num_classes > 0) {
    r.class_id = static_cast<int64_t>(job.seed % static_cast<uint64_t>(info.num_classes));
  } else {
    for (int u = 0; u < 2; ++u)
      for (auto& [name, shape] : inputs) {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        std::vector<float> v(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) v[i] = name.find("mask") != std::string::npos ? 1.0f : std::sin(0.37f * float(i) + float(job.seed) + u);
        (u ? r.uncond : r.cond)[name] = deltadit::Tensor::floats(shape, v);
      }
  }
  return r;
}

int fail(const std::string& what) {
  std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  return 1;
}

}  // namespace

int tokenize(int argc, char** argv) {
  if (argc < 8) return fail("usage: deltadit_selftest --tokenize TOKENIZER_JSON L PAD EOS UNK PROMPT...");
  deltadit::detail::WordTokenizer tok(argv[2], {std::atoi(argv[3]), std::atoll(argv[4]), std::atoll(argv[5]), std::atoll(argv[6]), true});
  for (int i = 7; i < argc; ++i) {
    auto [ids, mask] = tok.encode(argv[i]);
    for (auto v : ids) std::printf("%lld ", static_cast<long long>(v));
    std::printf("|");
    for (auto v : mask) std::printf(" %lld", static_cast<long long>(v));
    std::printf("\n");
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--tokenize") return tokenize(argc, argv);
  if (argc < 3) return fail("usage: deltadit_selftest BUNDLE THREADS [NAME:D1xD2x...]... (conditioning inputs, batch 1)");
  std::vector<std::pair<std::string, std::vector<int64_t>>> inputs;
  for (int i = 3; i < argc; ++i) {
    std::string spec = argv[i];
    auto colon = spec.find(':');
    std::vector<int64_t> shape{1};
    for (size_t p = colon + 1; p < spec.size();) {
      size_t x = spec.find('x', p);
      shape.push_back(std::stoll(spec.substr(p, x - p)));
      p = x == std::string::npos ? spec.size() : x + 1;
    }
    inputs.emplace_back(spec.substr(0, colon), shape);
  }
  try {
    auto bundle = deltadit::Bundle::open(argv[1]);
    const int threads = std::atoi(argv[2]);
    std::vector<Job> jobs;
    for (int i = 0; i < threads; ++i) jobs.push_back({static_cast<uint64_t>(i), i % 3 != 2});
    std::vector<std::vector<float>> single;
    for (auto& job : jobs) single.push_back(bundle->generate(request_for(*bundle, job, inputs)).latents.f32);
    std::vector<std::vector<float>> concurrent(jobs.size());
    std::vector<std::string> errors(jobs.size());
    std::vector<std::thread> pool;
    for (size_t i = 0; i < jobs.size(); ++i)
      pool.emplace_back([&, i] {
        try {
          concurrent[i] = bundle->generate(request_for(*bundle, jobs[i], inputs)).latents.f32;
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    for (auto& t : pool) t.join();
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (!errors[i].empty()) return fail("thread " + std::to_string(i) + ": " + errors[i]);
      if (concurrent[i] != single[i]) return fail("thread " + std::to_string(i) + " differs from the single-threaded result");
      for (float v : single[i])
        if (!std::isfinite(v)) return fail("non-finite latents");
    }
    if (jobs.size() > 1 && single[0] == single[1]) return fail("two seeds gave the same latents");
    // The C ABI: a refused bundle gives an error code and a message, never an exception.
    ddt_bundle* none = nullptr;
    if (ddt_open("/nonexistent/bundle", nullptr, &none) != DDT_ERROR || !std::strstr(ddt_last_error(), "is not a folder"))
      return fail("C ABI did not report a missing bundle");
    if (ddt_generate(nullptr, nullptr, nullptr) != DDT_INVALID_ARGUMENT) return fail("C ABI accepted NULL");
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  std::puts("ok");
  return 0;
}
