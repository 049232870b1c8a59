#include "tokenizer.hpp"

#include <nlohmann/json.hpp>

#include <cctype>
#include <fstream>

#include "deltadit/deltadit.hpp"

namespace deltadit::detail {
namespace {

// ASCII letters, digits and '_' are word characters; bytes of multi-byte UTF-8 characters count as word
// characters too (letters in practice: the animals vocabulary is ASCII).
bool word_char(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }
bool space(unsigned char c) { return std::isspace(c) != 0; }

}  // namespace

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  size_t i = 0;
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (space(c)) {
      ++i;
      continue;
    }
    bool w = word_char(c);
    size_t j = i;
    while (j < text.size() && !space(static_cast<unsigned char>(text[j])) && word_char(static_cast<unsigned char>(text[j])) == w) ++j;
    words.push_back(text.substr(i, j - i));
    i = j;
  }
  return words;
}

WordTokenizer::WordTokenizer(const std::string& path, const TokenizerSettings& settings) : s_(settings) {
  std::ifstream in(path);
  nlohmann::json data;
  try {
    data = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + " | is not valid JSON (" + e.what() + "). Expected: a Hugging Face tokenizer.json.");
  }
  const auto& model = data.value("model", nlohmann::json::object());
  std::string type = model.value("type", std::string("?"));
  if (type != "WordLevel")
    throw Error(path + " | is a " + type + " tokenizer, which the C++ runtime does not implement. Expected: a WordLevel "
                "tokenizer (e.g. the animals model's), or pass encoder_hidden_states + encoder_attention_mask yourself.");
  const auto& pre = data.value("pre_tokenizer", nlohmann::json());
  if (!pre.is_null() && pre.value("type", std::string()) != "Whitespace")
    throw Error(path + " | pre_tokenizer " + pre.value("type", std::string("?")) + " is not implemented. Expected: Whitespace.");
  const nlohmann::json vocab = model.value("vocab", nlohmann::json::object());
  for (auto& [word, id] : vocab.items())
    if (id.is_number_integer()) vocab_[word] = id.get<int64_t>();
  if (vocab_.empty()) throw Error(path + " | has an empty vocabulary. Expected: a WordLevel tokenizer.json.");
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> WordTokenizer::encode(const std::string& prompt) const {
  std::string text = prompt;
  if (s_.lowercase) {
    for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    size_t a = text.find_first_not_of(" \t\n\r\f\v"), b = text.find_last_not_of(" \t\n\r\f\v");
    text = a == std::string::npos ? "" : text.substr(a, b - a + 1);
  }
  std::vector<int64_t> ids;
  for (auto& w : split_words(text)) {
    auto it = vocab_.find(w);
    if (it != vocab_.end()) ids.push_back(it->second);
    else if (s_.unk_id >= 0) ids.push_back(s_.unk_id);
  }
  size_t keep = static_cast<size_t>(s_.max_length - (s_.eos_id >= 0 ? 1 : 0));
  if (ids.size() > keep) ids.resize(keep);
  if (s_.eos_id >= 0) ids.push_back(s_.eos_id);
  std::vector<int64_t> mask(ids.size(), 1);
  ids.resize(static_cast<size_t>(s_.max_length), s_.pad_id);
  mask.resize(static_cast<size_t>(s_.max_length), 0);
  return {ids, mask};
}

}  // namespace deltadit::detail
