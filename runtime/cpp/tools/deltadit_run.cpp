// deltadit-run BUNDLE (--prompt TEXT | --class ID) [--seed N] [--out image.png] [--no-cache] [--guidance S]
//              [--provider cpu|cuda|tensorrt] [--noise FILE.f32] [--latents-out FILE.f32]
// Prompt or class -> image with a bundle, in C++. Exit 0 on success, 2 on a usage error, 1 on a refused bundle.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "deltadit/deltadit.hpp"

namespace {

const char* kUsage =
    "usage: deltadit-run BUNDLE (--prompt TEXT | --class ID) [--seed N] [--out image.png] [--no-cache]\n"
    "                    [--guidance S] [--provider cpu|cuda|tensorrt] [--noise FILE.f32] [--latents-out FILE.f32]\n";

std::vector<float> read_floats(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw deltadit::Error(path + " | cannot be read. Expected: raw little-endian float32 values.");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

void write_floats(const std::string& path, const std::vector<float>& v) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  if (!out) throw deltadit::Error(path + " | cannot be written. Expected: a writable file path.");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string bundle_path = argv[1], out_path, latents_path;
  deltadit::Request req;
  deltadit::Options options;
  try {
    for (int i = 2; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
        return argv[++i];
      };
      if (a == "--prompt") req.prompt = value();
      else if (a == "--class") req.class_id = std::stoll(value());
      else if (a == "--seed") req.seed = std::stoull(value());
      else if (a == "--out") out_path = value();
      else if (a == "--no-cache") req.cache = false;
      else if (a == "--guidance") req.guidance_scale = std::stof(value());
      else if (a == "--provider") options.provider = value();
      else if (a == "--noise") req.noise = read_floats(value());
      else if (a == "--latents-out") latents_path = value();
      else throw std::invalid_argument("unknown option " + a);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deltadit-run: %s\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    auto t0 = std::chrono::steady_clock::now();
    auto bundle = deltadit::Bundle::open(bundle_path, options);
    double open_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    deltadit::Result r = bundle->generate(req);
    if (!latents_path.empty()) write_floats(latents_path, r.latents.f32);
    if (!out_path.empty()) {
      if (r.image.empty())
        throw deltadit::Error("--out | bundle " + bundle_path + " decodes with a VAE, which bundles do not carry. Expected: "
                              "--latents-out FILE.f32 and decode with the model's VAE.");
      const auto& s = r.latents.shape;
      deltadit::write_png(out_path, r.image, int(s[2]), int(s[3]), int(s[1]));
    }
    std::printf("%s: %d steps, open %.3f s, generate %.3f s (segments %.3f s)%s%s\n", bundle->info().arch.c_str(),
                r.timing.steps, open_s, r.timing.total_s, r.timing.segments_s, out_path.empty() ? "" : " -> ", out_path.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deltadit-run: %s\n", e.what());
    return 1;
  }
}
