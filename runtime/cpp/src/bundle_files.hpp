// Reading a bundle as a closed, verified unit (the C++ twin of deltadit.bundle.read_bundle).
#pragma once

#include <string>
#include <vector>

#include "manifest.hpp"

namespace deltadit::detail {

// Parse + validate manifest.json, then check every listed file: inside the bundle (no symlink on its
// path), a regular file, matching sha256; every ONNX graph's external data is one of its owner's files.
Manifest read_bundle(const std::string& root);

std::string sha256_file(const std::string& path);

// root + "/" + relative if no part of it is a symlink and it stays inside root; else throws.
std::string inside_or_throw(const std::string& root, const std::string& relative);

void check_external_data(const std::string& root, const std::string& owner, const std::vector<FileEntry>& files);

}  // namespace deltadit::detail
