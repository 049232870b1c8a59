// The Δ-DiT plan executor (the C++ twin of deltadit/runtime/executor.py).
//
// Full step: head, every group, tail; before the first group of each recorded range [s, e) it keeps the
// carried streams, after the group ending at e it stores Δ = h_e - h_s per stream (paper Eq. 3). Cached
// step: head; groups outside the cached range run; where the range starts, Δ is added instead of running
// its groups; tail. Decisions come only from the plan. One executor per generation (it holds the deltas).
#pragma once

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "manifest.hpp"
#include "ort.hpp"

namespace deltadit::detail {

class Executor {
 public:
  // cache = false: every step in full, recording nothing (the --no-cache path).
  Executor(const Manifest& manifest, const Sessions& sessions, bool cache);
  // Run plan step `index` on the head's feeds; the tail's outputs. Adds ORT time to *seconds.
  Values step(int index, const Values& feeds, double* seconds);

 private:
  Values run(size_t segment, const Values& feeds, double* seconds) const;

  const Manifest& m_;
  const Sessions& sessions_;
  bool cache_;
  std::set<std::string> streams_;  // what a group hands to the next
  std::map<std::pair<int, int>, Values> deltas_;
  int last_full_ = -1;
};

// Elementwise a - b and a + b of float32 tensors of one shape.
Value sub(const Value& a, const Value& b);
Value add(const Value& a, const Value& b);

}  // namespace deltadit::detail
