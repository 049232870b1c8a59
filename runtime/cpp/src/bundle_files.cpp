// A bundle is closed: every file it uses is listed, hashed and inside it (mirrors deltadit/bundle.py).
#include "bundle_files.hpp"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <set>

#include "deltadit/deltadit.hpp"

namespace deltadit::detail {
namespace {

constexpr uint64_t kMaxManifestBytes = 16u << 20;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + " | cannot be read. Expected: a readable file.");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string real(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return "";
  return buf;
}

bool is_symlink(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

bool is_regular(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string dirname(const std::string& p) {
  auto i = p.rfind('/');
  return i == std::string::npos ? "" : p.substr(0, i);
}

// posixpath.normpath for a relative join (an absolute or escaping result keeps its '/' or '..').
std::string normpath(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (part == "..") {
      if (!parts.empty() && parts.back() != "..") parts.pop_back();
      else parts.push_back(part);
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    start = end + 1;
  }
  std::string out = !path.empty() && path[0] == '/' ? "/" : "";
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "/" : "") + parts[i];
  return out;
}

// A minimal protobuf walker over an ONNX ModelProto: yields every TensorProto's external-data location.
struct Proto {
  const uint8_t* p;
  const uint8_t* end;

  bool more() const { return p < end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
      uint8_t b = *p++;
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    throw Error("onnx | malformed protobuf varint");
  }
  // Next field: (number, wire type, payload for LEN fields).
  bool next(uint32_t& field, uint32_t& wire, Proto& sub, uint64_t& value) {
    if (!more()) return false;
    uint64_t key = varint();
    field = uint32_t(key >> 3);
    wire = uint32_t(key & 7);
    if (wire == 0) value = varint();
    else if (wire == 1) skip(8);
    else if (wire == 5) skip(4);
    else if (wire == 2) {
      uint64_t n = varint();
      if (n > uint64_t(end - p)) throw Error("onnx | truncated protobuf field");
      sub = {p, p + n};
      p += n;
    } else throw Error("onnx | unsupported protobuf wire type " + std::to_string(wire));
    return true;
  }
  void skip(size_t n) {
    if (n > size_t(end - p)) throw Error("onnx | truncated protobuf field");
    p += n;
  }
};

using Locations = std::vector<std::string>;

void tensor(Proto t, Locations& out) {
  uint32_t f, w;
  uint64_t v = 0;
  Proto sub{};
  bool external = false;
  std::string location;
  while (t.next(f, w, sub, v)) {
    if (f == 14 && w == 0) external = v == 1;  // data_location = EXTERNAL
    if (f == 13 && w == 2) {                    // external_data: StringStringEntryProto {key = 1, value = 2}
      std::string key, val;
      Proto e = sub, s{};
      uint32_t ef, ew;
      uint64_t ev;
      while (e.next(ef, ew, s, ev))
        if (ew == 2) (ef == 1 ? key : val).assign(reinterpret_cast<const char*>(s.p), s.end - s.p);
      if (key == "location") location = val;
    }
  }
  if (external) out.push_back(location);
}

void graph(Proto g, Locations& out, int depth);

void attribute(Proto a, Locations& out, int depth) {
  uint32_t f, w;
  uint64_t v;
  Proto sub{};
  while (a.next(f, w, sub, v)) {
    if (w != 2) continue;
    if (f == 5 || f == 10) tensor(sub, out);       // t, tensors
    else if (f == 6 || f == 11) graph(sub, out, depth + 1);  // g, graphs
    else if (f == 22 || f == 23) {                 // sparse_tensor(s): values = 1, indices = 2
      Proto s = sub, t{};
      uint32_t sf, sw;
      uint64_t sv;
      while (s.next(sf, sw, t, sv))
        if (sw == 2 && (sf == 1 || sf == 2)) tensor(t, out);
    }
  }
}

void nodes_of(Proto n, Locations& out, int depth) {
  uint32_t f, w;
  uint64_t v;
  Proto sub{};
  while (n.next(f, w, sub, v))
    if (f == 5 && w == 2) attribute(sub, out, depth);
}

void graph(Proto g, Locations& out, int depth) {
  if (depth > 64) throw Error("onnx | subgraphs nested too deep");
  uint32_t f, w;
  uint64_t v;
  Proto sub{};
  while (g.next(f, w, sub, v)) {
    if (w != 2) continue;
    if (f == 1) nodes_of(sub, out, depth);  // node
    else if (f == 5) tensor(sub, out);      // initializer
    else if (f == 15) attribute(sub, out, depth);  // sparse_initializer: fields 1, 2 are tensors (as above)
  }
}

Locations external_locations(const std::string& bytes) {
  Proto m{reinterpret_cast<const uint8_t*>(bytes.data()), reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size()};
  Locations out;
  uint32_t f, w;
  uint64_t v;
  Proto sub{};
  while (m.next(f, w, sub, v)) {
    if (f == 7 && w == 2) graph(sub, out, 0);  // ModelProto.graph
    if (f == 25 && w == 2) {                   // functions: FunctionProto.node = 7
      Proto fn = sub, n{};
      uint32_t ff, fw;
      uint64_t fv;
      while (fn.next(ff, fw, n, fv))
        if (ff == 7 && fw == 2) nodes_of(n, out, 1);
    }
  }
  return out;
}

}  // namespace

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + " | cannot be read. Expected: a readable file.");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw Error("sha256 | OpenSSL could not start a digest");
  std::vector<char> buf(1 << 22);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &n);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) out += hex[md[i] >> 4], out += hex[md[i] & 15];
  return out;
}

std::string inside_or_throw(const std::string& root, const std::string& relative) {
  check_relative_path(relative, "path");
  std::string here = root;
  size_t start = 0;
  while (true) {
    size_t end = relative.find('/', start);
    here += "/" + relative.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (is_symlink(here))
      throw Error(here + " | is a symbolic link. Expected: a bundle holds its files itself (a link can point outside "
                  "it); copy the bundle with its files, e.g. cp -rL.");
    if (end == std::string::npos) break;
    start = end + 1;
  }
  std::string r = real(here), base = real(root);
  if (!r.empty() && r.compare(0, base.size() + 1, base + "/") != 0)
    throw Error(here + " | lies outside the bundle. Expected: files inside the bundle folder.");
  return here;
}

Manifest read_bundle(const std::string& root) {
  struct stat st;
  if (::stat(root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw Error("bundle " + root + " | is not a folder. Expected: the output folder of deltadit-export.");
  std::string path = root + "/manifest.json";
  if (!is_regular(path)) {
    bool partial = root.size() > 8 && root.compare(root.size() - 8, 8, ".partial") == 0;
    throw Error("bundle " + root + " | has no manifest.json" +
                (partial ? " (an interrupted export leaves BUNDLE.partial/; re-run deltadit-export)" : "") +
                ". Expected: the output folder of deltadit-export.");
  }
  inside_or_throw(root, "manifest.json");
  ::stat(path.c_str(), &st);
  if (uint64_t(st.st_size) > kMaxManifestBytes)
    throw Error(path + " | is " + std::to_string(st.st_size) + " bytes. Expected: a manifest written by deltadit-export (under 16 MiB).");
  nlohmann::json data;
  try {
    data = nlohmann::json::parse(read_all(path));
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path + " | is not valid JSON (" + e.what() + "). Expected: a manifest written by deltadit-export.");
  }
  Manifest m;
  try {
    m = parse_manifest(data);
  } catch (const Error& e) {
    throw Error("bundle " + root + " | " + e.what());
  }
  std::vector<std::string> problems;
  for (auto& [owner, entry] : m.files()) {
    std::string f = root + "/" + entry.path;
    try {
      inside_or_throw(root, entry.path);
    } catch (const Error& e) {
      problems.push_back(e.what());
      continue;
    }
    if (!is_regular(f)) problems.push_back(f + " | missing (segment " + owner + "). Expected: the file the manifest lists; re-export the bundle.");
    else if (sha256_file(f) != entry.sha256)
      problems.push_back(f + " | sha256 does not match the manifest (segment " + owner + "): the file is corrupt or was "
                         "changed. Expected: re-export the bundle or restore the file.");
  }
  if (problems.size() == 1) throw Error(problems[0]);
  if (!problems.empty()) {
    std::string msg = "bundle " + root + " | failed its integrity check:";
    for (auto& p : problems) msg += "\n" + p;
    throw Error(msg);
  }
  for (auto& s : m.segments) check_external_data(root, s.name, s.files);
  if (m.text_encoder.present) check_external_data(root, "text_encoder", m.text_encoder.files);
  return m;
}

void check_external_data(const std::string& root, const std::string& owner, const std::vector<FileEntry>& files) {
  std::set<std::string> owned;
  for (auto& f : files) owned.insert(f.path);
  for (auto& entry : files) {
    if (entry.path.size() < 5 || entry.path.compare(entry.path.size() - 5, 5, ".onnx") != 0) continue;
    std::string where = root + "/" + entry.path;
    Locations locations;
    try {
      locations = external_locations(read_all(where));
    } catch (const Error& e) {
      throw Error(where + " | is not a readable ONNX model (" + e.what() + "). Expected: a bundle written by deltadit-export.");
    }
    for (auto& loc : locations) {
      std::string dir = dirname(entry.path);
      std::string target = normpath(loc.empty() || loc[0] == '/' ? loc : (dir.empty() ? loc : dir + "/" + loc));
      if (!owned.count(target))
        throw Error(where + " | reads external data from '" + loc + "', which is not one of segment " + owner +
                    "'s hashed files. Expected: a bundle written by deltadit-export; re-export it.");
    }
  }
}

}  // namespace deltadit::detail
