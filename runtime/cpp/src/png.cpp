// 8-bit PNG without a dependency: stored (uncompressed) deflate blocks, CRC-32 and Adler-32 written here.
#include <cmath>
#include <cstdio>
#include <memory>

#include "deltadit/deltadit.hpp"

namespace deltadit {
namespace {

uint32_t crc32(const unsigned char* p, size_t n, uint32_t crc = 0) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void put32(std::string& s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s += static_cast<char>((v >> shift) & 0xff);
}

void chunk(std::string& png, const char* type, const std::string& data) {
  put32(png, static_cast<uint32_t>(data.size()));
  std::string body = std::string(type, 4) + data;
  png += body;
  put32(png, crc32(reinterpret_cast<const unsigned char*>(body.data()), body.size()));
}

// zlib stream of stored blocks (<= 65535 bytes each).
std::string zlib_stored(const std::string& raw) {
  std::string z("\x78\x01", 2);
  size_t pos = 0;
  do {
    size_t n = std::min<size_t>(65535, raw.size() - pos);
    z += static_cast<char>(pos + n == raw.size() ? 1 : 0);
    z += static_cast<char>(n & 0xff), z += static_cast<char>(n >> 8);
    z += static_cast<char>(~n & 0xff), z += static_cast<char>((~n >> 8) & 0xff);
    z += raw.substr(pos, n);
    pos += n;
  } while (pos < raw.size());
  uint32_t a = 1, b = 0;
  for (unsigned char c : raw) a = (a + c) % 65521, b = (b + a) % 65521;
  put32(z, (b << 16) | a);
  return z;
}

}  // namespace

void write_png(const std::string& path, const std::vector<float>& image, int height, int width, int channels) {
  if ((channels != 1 && channels != 3) || image.size() != size_t(height) * width * channels)
    throw Error("image | " + std::to_string(image.size()) + " values for " + std::to_string(height) + "x" + std::to_string(width) +
                "x" + std::to_string(channels) + ". Expected: H*W*C values with C = 1 or 3.");
  std::string raw;
  for (int y = 0; y < height; ++y) {
    raw += '\0';  // filter: none
    for (int x = 0; x < width * channels; ++x) {
      float v = std::min(1.0f, std::max(0.0f, image[size_t(y) * width * channels + x]));
      raw += static_cast<char>(static_cast<unsigned char>(std::lround(v * 255.0f)));
    }
  }
  std::string png("\x89PNG\r\n\x1a\n", 8), header;
  put32(header, uint32_t(width)), put32(header, uint32_t(height));
  header += std::string{8, static_cast<char>(channels == 1 ? 0 : 2), 0, 0, 0};
  chunk(png, "IHDR", header);
  chunk(png, "IDAT", zlib_stored(raw));
  chunk(png, "IEND", "");
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), std::fclose);
  if (!f || std::fwrite(png.data(), 1, png.size(), f.get()) != png.size())
    throw Error(path + " | cannot be written. Expected: a writable file path.");
}

}  // namespace deltadit
