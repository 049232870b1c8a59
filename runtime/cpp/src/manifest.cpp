// Manifest parsing and validation (mirrors deltadit/manifest.py and deltadit/plan.py's structural checks).
#include "manifest.hpp"

#include <algorithm>
#include <regex>
#include <set>

#include "deltadit/deltadit.hpp"

namespace deltadit::detail {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxDim = 1 << 20;
constexpr int kMaxBlocks = 512, kMaxSteps = 1000;

std::string show(const json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// Typed field access with the Python reader's messages.
struct Fields {
  const json& data;
  std::string where;

  std::string at(const std::string& key) const { return where.empty() ? key : where + "." + key; }
  const json& get(const std::string& key) const {
    static const json null;
    auto it = data.find(key);
    return it == data.end() ? null : *it;
  }
  Fields obj(const std::string& key, bool optional = false) const {
    const json& v = get(key);
    if (optional && v.is_null()) return {v, at(key)};
    if (!v.is_object()) bad(at(key), "is " + show(v), "an object");
    return {v, at(key)};
  }
  const json& list(const std::string& key, size_t max) const {
    const json& v = get(key);
    if (!v.is_array() || v.size() > max) bad(at(key), "is " + show(v), "a list of at most " + std::to_string(max) + " entries");
    return v;
  }
  std::string str(const std::string& key, const std::vector<std::string>& choices = {}, bool optional = false) const {
    const json& v = get(key);
    if (optional && v.is_null()) return "";
    if (!v.is_string()) bad(at(key), "is " + show(v), "a string");
    auto s = v.get<std::string>();
    if (!choices.empty() && std::find(choices.begin(), choices.end(), s) == choices.end()) {
      std::string opts;
      for (auto& c : choices) opts += (opts.empty() ? "" : ", ") + c;
      bad(at(key), "is " + show(v), "one of " + opts);
    }
    return s;
  }
  int64_t integer(const std::string& key, int64_t lo, int64_t hi, bool optional = false, int64_t dflt = 0) const {
    const json& v = get(key);
    if (optional && v.is_null()) return dflt;
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
      bad(at(key), "is " + show(v), "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v.get<int64_t>();
  }
  double number(const std::string& key, double lo, double hi) const {
    const json& v = get(key);
    if (!v.is_number() || v.get<double>() < lo || v.get<double>() > hi)
      bad(at(key), "is " + show(v), "a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v.get<double>();
  }
  bool boolean(const std::string& key) const {
    const json& v = get(key);
    if (!v.is_boolean()) bad(at(key), "is " + show(v), "true or false");
    return v.get<bool>();
  }
};

const std::regex kName("^[A-Za-z0-9_]{1,64}$");
const std::regex kSha("^[0-9a-f]{64}$");
const std::vector<std::string> kDtypes{"float32", "float16", "bfloat16", "int64", "int32", "bool"};

FileEntry file_entry(const Fields& f) {
  FileEntry e{check_relative_path(f.str("path"), f.at("path")), f.str("sha256")};
  if (!std::regex_match(e.sha256, kSha)) bad(f.at("sha256"), "is " + show(f.get("sha256")), "64 lower-case hex digits");
  return e;
}

TensorDesc tensor(const Fields& f) {
  TensorDesc t;
  t.name = f.str("name");
  if (!std::regex_match(t.name, kName)) bad(f.at("name"), "is " + show(f.get("name")), "a tensor name");
  t.dtype = f.str("dtype", kDtypes);
  t.onnx_name = f.str("onnx_name", {}, true);
  if (t.onnx_name.empty()) t.onnx_name = t.name;
  const json& shape = f.list("shape", 8);
  for (size_t i = 0; i < shape.size(); ++i) {
    const json& d = shape[i];
    if (i == 0 && d == "batch") t.shape.push_back(kBatch);
    else if (d.is_number_integer() && d.get<int64_t>() >= 1 && d.get<int64_t>() <= kMaxDim) t.shape.push_back(d.get<int64_t>());
    else bad(f.at("shape[" + std::to_string(i) + "]"), "is " + show(d), "'batch' on axis 0, else an integer in [1, 1048576]");
  }
  return t;
}

std::vector<TensorDesc> tensors(const Fields& f, const std::string& key) {
  std::vector<TensorDesc> out;
  const json& l = f.list(key, 32);
  for (size_t i = 0; i < l.size(); ++i) out.push_back(tensor({l[i], f.at(key) + "[" + std::to_string(i) + "]"}));
  return out;
}

SegmentInfo segment(const Fields& f) {
  SegmentInfo s;
  s.name = f.str("name");
  if (!std::regex_match(s.name, kName)) bad(f.at("name"), "is " + show(f.get("name")), "a segment name");
  s.kind = f.str("kind", {"head", "group", "tail"});
  const json& br = f.get("block_range");
  if (s.kind == "group") {
    if (!br.is_array() || br.size() != 2 || !br[0].is_number_integer() || !br[1].is_number_integer() ||
        br[0].get<int>() < 0 || br[0].get<int>() >= br[1].get<int>() || br[1].get<int>() > kMaxBlocks)
      bad(f.at("block_range"), "is " + show(br), "[start, stop) with 0 <= start < stop");
    s.start = br[0].get<int>();
    s.stop = br[1].get<int>();
  } else if (!br.is_null()) {
    bad(f.at("block_range"), "is " + show(br) + " on a " + s.kind, "null for the head and tail");
  }
  s.precision = f.str("precision", {"fp32", "fp16", "int8"}, true);
  if (s.precision.empty()) s.precision = "fp32";
  const json& files = f.list("files", 8);
  for (size_t i = 0; i < files.size(); ++i) {
    Fields ff{files[i], f.at("files[" + std::to_string(i) + "]")};
    FileEntry e = file_entry(ff);
    // A segment owns only files named after it: entries cannot be swapped between segments.
    if (e.path.rfind("onnx/" + s.name + ".", 0) != 0)
      bad(ff.at("path"), "is '" + e.path + "', which is not a file of segment " + s.name,
          "onnx/" + s.name + ".onnx and its companions");
    s.files.push_back(e);
  }
  if (s.files.empty() || s.files[0].path != "onnx/" + s.name + ".onnx")
    bad(f.at("files"), "does not start with the segment's graph", "onnx/" + s.name + ".onnx first");
  Fields ort = f.obj("ort_graph", true);
  if (!ort.data.is_null()) {
    s.ort_graph = check_relative_path(ort.str("path"), ort.at("path"));
    if (std::none_of(s.files.begin(), s.files.end(), [&](auto& e) { return e.path == s.ort_graph; }))
      bad(ort.at("path"), "is '" + s.ort_graph + "', which is not among the segment's hashed files", "one of the segment's files");
  }
  s.inputs = tensors(f, "inputs");
  s.outputs = tensors(f, "outputs");
  return s;
}

std::pair<int, int> range(const json& r, const std::string& where) {
  if (!r.is_array() || r.size() != 2 || !r[0].is_number_integer() || !r[1].is_number_integer())
    bad(where, "is " + show(r), "[start, stop)");
  return {r[0].get<int>(), r[1].get<int>()};
}

std::vector<StepAction> plan(const Fields& f, int steps) {
  if (f.integer("num_steps", 1, kMaxSteps) != steps)
    bad("sampling.steps", "is " + std::to_string(steps) + " but the plan has " + show(f.get("num_steps")) + " steps", "equal step counts");
  const json& raw = f.list("steps", kMaxSteps);
  if (static_cast<int>(raw.size()) != steps) bad("plan.steps", "has " + std::to_string(raw.size()) + " entries", "one per step");
  std::vector<StepAction> out;
  for (size_t i = 0; i < raw.size(); ++i) {
    std::string where = "plan.steps[" + std::to_string(i) + "]";
    if (!raw[i].is_object()) bad(where, "is " + show(raw[i]), "a step object");
    StepAction a;
    const json& c = raw[i].contains("cached") ? raw[i]["cached"] : json();
    a.cached = !c.is_null();
    if (a.cached) a.range = range(c, where + ".cached");
    const json& rec = raw[i].contains("record") ? raw[i]["record"] : json::array();
    if (!rec.is_array()) bad(where + ".record", "is " + show(rec), "a list of ranges");
    for (auto& r : rec) a.record.push_back(range(r, where + ".record"));
    out.push_back(a);
  }
  return out;
}

// Structural plan checks: groups tile the blocks; step 0 is full; a cached range is whole groups and was
// recorded by the latest full step before it.
void check_plan(const Manifest& m) {
  std::set<int> cuts{0};
  int at = 0;
  for (auto& s : m.segments) {
    if (s.kind != "group") continue;
    if (s.start != at) bad("segments", "cut the blocks with a gap or overlap at block " + std::to_string(at), "groups tiling [0, num_blocks)");
    at = s.stop;
    cuts.insert(s.stop);
  }
  if (at != m.num_blocks) bad("segments", "end at block " + std::to_string(at), "groups up to plan.num_blocks = " + std::to_string(m.num_blocks));
  std::set<std::pair<int, int>> recorded;
  for (size_t i = 0; i < m.plan.size(); ++i) {
    const StepAction& a = m.plan[i];
    std::string where = "plan.steps[" + std::to_string(i) + "]";
    auto whole = [&](std::pair<int, int> r) { return r.first < r.second && cuts.count(r.first) && cuts.count(r.second); };
    if (a.cached) {
      if (i == 0 || !recorded.count(a.range)) bad(where + ".cached", "uses a Δ no earlier full step recorded", "a plan written by deltadit");
      if (!whole(a.range)) bad(where + ".cached", "is not whole block groups", "ranges on the segments' cut points");
    } else {
      recorded.clear();
      for (auto& r : a.record) {
        if (!whole(r)) bad(where + ".record", "is not whole block groups", "ranges on the segments' cut points");
        recorded.insert(r);
      }
    }
  }
}

void check_segments(const Manifest& m) {
  std::set<std::string> names, paths;
  for (auto& s : m.segments) {
    if (!names.insert(s.name).second) bad("segments", "repeat a name", "unique segment names");
    for (auto& f : s.files)
      if (!paths.insert(f.path).second) bad("segments[].files", "list one file twice", "each file once");
  }
  const auto& seg = m.segments;
  int heads = 0, tails = 0;
  for (auto& s : seg) heads += s.kind == "head", tails += s.kind == "tail";
  if (seg.size() < 3 || heads != 1 || tails != 1 || seg.front().kind != "head" || seg.back().kind != "tail")
    bad("segments", "are not head, block groups, tail", "one head first, block groups, one tail last");
}

Driver driver(const Fields& f) {
  Driver d;
  auto names = [&](const std::string& key) {
    std::vector<std::string> out;
    for (auto& v : f.list(key, 64)) {
      if (!v.is_string() || !std::regex_match(v.get<std::string>(), kName)) bad(f.at(key), "is " + show(f.get(key)), "a list of tensor names");
      out.push_back(v.get<std::string>());
    }
    return out;
  };
  d.streams = names("streams");
  d.unbatched = names("unbatched");
  d.conditioning = f.str("conditioning");
  d.cfg_order = f.str("cfg_order", {"uncond_first", "cond_first"});
  d.step_on_cfg_batch = f.boolean("step_on_cfg_batch");
  d.embedded_guidance = f.boolean("embedded_guidance");
  d.learned_sigma = f.boolean("learned_sigma");
  d.timestep_divisor = f.number("timestep_divisor", 1e-6, 1e6);
  d.latent_layout = f.str("latent_layout", {"nchw", "packed-2x2"});
  for (auto& v : f.list("noise_shape", 4)) {
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > kMaxDim) bad(f.at("noise_shape"), "is " + show(f.get("noise_shape")), "positive integers");
    d.noise_shape.push_back(v.get<int64_t>());
  }
  return d;
}

TextEncoderInfo text_encoder(const Fields& f, const Manifest& m) {
  TextEncoderInfo t;
  if (f.data.is_null()) return t;
  t.present = true;
  const json& files = f.list("files", 2);
  const std::vector<std::string> allowed{"text_encoder/model.onnx", "text_encoder/model.onnx.data"};
  for (size_t i = 0; i < files.size(); ++i) {
    FileEntry e = file_entry({files[i], f.at("files[" + std::to_string(i) + "]")});
    if (e.path != allowed[i]) bad(f.at("files[" + std::to_string(i) + "].path"), "is '" + e.path + "'", allowed[i]);
    t.files.push_back(e);
  }
  if (t.files.empty()) bad(f.at("files"), "is empty", "text_encoder/model.onnx first");
  t.tokenizer = file_entry(f.obj("tokenizer"));
  if (t.tokenizer.path != "text_encoder/tokenizer.json") bad(f.at("tokenizer.path"), "is '" + t.tokenizer.path + "'", "text_encoder/tokenizer.json");
  t.max_length = static_cast<int>(f.integer("max_length", 1, 1024));
  if (t.max_length != m.text_len) bad(f.at("max_length"), "is " + std::to_string(t.max_length), "export.text_len = " + std::to_string(m.text_len));
  t.pad_id = f.integer("pad_id", 0, INT32_MAX);
  t.eos_id = f.integer("eos_id", 0, INT32_MAX, true, -1);
  t.unk_id = f.integer("unk_id", 0, INT32_MAX, true, -1);
  t.lowercase = f.boolean("lowercase");
  t.inputs = tensors(f, "inputs");
  t.outputs = tensors(f, "outputs");
  for (auto& [k, v] : f.obj("head_inputs").data.items()) {
    if (!v.is_string()) bad(f.at("head_inputs." + k), "is " + show(v), "a text-encoder tensor name");
    const auto& head = m.segments.front().inputs;
    if (std::none_of(head.begin(), head.end(), [&](auto& d) { return d.name == k; }))
      bad(f.at("head_inputs." + k), "names no input of the head segment", "head input names");
    t.head_inputs.emplace_back(k, v.get<std::string>());
  }
  return t;
}

}  // namespace

void bad(const std::string& where, const std::string& problem, const std::string& expected) {
  throw Error("manifest field " + where + " | " + problem + ". Expected: " + expected +
              " (a manifest written by deltadit-export; re-export the bundle).");
}

const std::string& check_relative_path(const std::string& path, const std::string& where) {
  bool ok = !path.empty() && path[0] != '/' && path.find('\\') == std::string::npos && path.find('\0') == std::string::npos &&
            !(path.size() >= 2 && std::isalpha(static_cast<unsigned char>(path[0])) && path[1] == ':');
  size_t start = 0;
  while (ok) {  // every part non-empty and not "." / ".."; this also makes the path normalised
    size_t end = path.find('/', start);
    std::string part = path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    ok = !part.empty() && part != "." && part != "..";
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (!ok) bad(where, "is '" + path + "'", "a relative path inside the bundle (no '..', no absolute path)");
  return path;
}

std::vector<int64_t> TensorDesc::concrete(int64_t batch) const {
  std::vector<int64_t> out(shape);
  for (auto& d : out) d = d == kBatch ? batch : d;
  return out;
}

std::vector<std::pair<std::string, FileEntry>> Manifest::files() const {
  std::vector<std::pair<std::string, FileEntry>> out;
  for (auto& s : segments)
    for (auto& f : s.files) out.emplace_back(s.name, f);
  out.insert(out.end(), engine_files.begin(), engine_files.end());
  if (text_encoder.present) {
    for (auto& f : text_encoder.files) out.emplace_back("text_encoder", f);
    out.emplace_back("text_encoder", text_encoder.tokenizer);
  }
  return out;
}

Manifest parse_manifest(const json& data) {
  if (!data.is_object()) bad("(root)", "is " + show(data), "a JSON object");
  const json& version = data.contains("format_version") ? data["format_version"] : json();
  if (version != kFormatVersion) {
    bool newer = version.is_number_integer() && version.get<int64_t>() > kFormatVersion;
    throw Error("manifest | format version " + version.dump() + " is not supported by this deltadit (reads version " +
                std::to_string(kFormatVersion) + "). Expected: " +
                (newer ? "upgrade deltadit to read it." : "re-export it with this deltadit."));
  }
  Fields root{data, ""};
  Manifest m;
  Fields model = root.obj("model");
  m.arch = model.str("arch");
  m.preset = model.str("preset");
  m.decoder = model.str("decoder", {"vae", "pixels"});
  m.model_config = model.obj("config").data;
  m.precision = root.str("precision", {"fp32", "fp16", "int8"});
  Fields ex = root.obj("export");
  m.latent_side = static_cast<int>(ex.integer("latent_side", 1, 4096));
  m.text_len = static_cast<int>(ex.integer("text_len", 0, 4096));
  Fields s = root.obj("sampling");
  m.scheduler = s.str("scheduler", {"dpm-solver++", "euler", "ddim", "lcm", "flow-euler"});
  m.scheduler_config = s.obj("scheduler_config").data;
  m.guidance_scale = static_cast<float>(s.number("guidance_scale", 0, 100));
  m.steps = static_cast<int>(s.integer("steps", 1, kMaxSteps));
  m.driver = driver(root.obj("driver"));
  Fields p = root.obj("plan");
  m.num_blocks = static_cast<int>(p.integer("num_blocks", 1, kMaxBlocks));
  m.plan = plan(p, m.steps);
  const json& segs = root.list("segments", kMaxBlocks + 2);
  for (size_t i = 0; i < segs.size(); ++i) m.segments.push_back(segment({segs[i], "segments[" + std::to_string(i) + "]"}));
  check_segments(m);
  check_plan(m);
  Fields engines = root.obj("engines", true);
  if (!engines.data.is_null() && engines.get("files").is_object())
    for (auto& [name, entry] : engines.get("files").items()) {
      FileEntry e = file_entry({entry, "engines.files." + name});
      if (e.path.rfind("engines/" + name + "-", 0) != 0) bad("engines.files." + name + ".path", "is '" + e.path + "'", "engines/" + name + "-<key>.engine");
      m.engine_files.emplace_back("engines", e);
    }
  Fields int8 = root.obj("int8", true);
  if (!int8.data.is_null()) {
    Fields opts = int8.obj("options", true);
    m.int8_weight_bits = opts.data.is_null() ? 8 : static_cast<int>(opts.integer("weight_bits", 7, 8, true, 8));
  }
  m.text_encoder = text_encoder(root.obj("text_encoder", true), m);
  return m;
}

}  // namespace deltadit::detail
