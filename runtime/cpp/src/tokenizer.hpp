// Word-level tokenizer read from a Hugging Face tokenizer.json (model.type "WordLevel", Whitespace
// pre-tokenizer), as runtime/cpp/TEXT_ENCODER.md specifies: lower-case + strip, split on \w+|[^\w\s]+,
// vocabulary lookup (else unk), at most L - 1 words + eos, padded to L.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace deltadit::detail {

struct TokenizerSettings {
  int max_length = 0;
  int64_t pad_id = 0, eos_id = -1, unk_id = -1;  // -1: none
  bool lowercase = true;
};

class WordTokenizer {
 public:
  WordTokenizer() = default;
  // `path`: tokenizer.json; throws deltadit::Error for a tokenizer type other than WordLevel.
  WordTokenizer(const std::string& path, const TokenizerSettings& settings);
  // (input_ids, attention_mask), each max_length long.
  std::pair<std::vector<int64_t>, std::vector<int64_t>> encode(const std::string& prompt) const;

 private:
  std::map<std::string, int64_t> vocab_;
  TokenizerSettings s_;
};

// The Whitespace pre-tokenizer's words: runs of word characters, or of other non-space characters.
std::vector<std::string> split_words(const std::string& text);

}  // namespace deltadit::detail
