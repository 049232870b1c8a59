#include "executor.hpp"

namespace deltadit::detail {
namespace {

Value combine(const Value& a, const Value& b, float sign) {
  if (a->dtype != Tensor::DType::f32 || b->dtype != Tensor::DType::f32 || a->shape != b->shape)
    throw Error("executor | Δ of tensors with different shapes or a non-float stream. Expected: float32 streams of one shape.");
  auto out = std::make_shared<Tensor>();
  out->shape = a->shape;
  out->f32.resize(a->f32.size());
  for (size_t i = 0; i < out->f32.size(); ++i) out->f32[i] = sign > 0 ? a->f32[i] + b->f32[i] : a->f32[i] - b->f32[i];
  return out;
}

Values merged(const Values& head, const Values& state) {
  Values all = head;
  for (auto& [k, v] : state) all[k] = v;
  return all;
}

}  // namespace

Value sub(const Value& a, const Value& b) { return combine(a, b, -1); }
Value add(const Value& a, const Value& b) { return combine(a, b, 1); }

Executor::Executor(const Manifest& manifest, const Sessions& sessions, bool cache)
    : m_(manifest), sessions_(sessions), cache_(cache) {
  for (auto& s : m_.segments)
    if (s.kind == "group")
      for (auto& o : s.outputs) streams_.insert(o.name);
}

Values Executor::run(size_t segment, const Values& feeds, double* seconds) const {
  return sessions_.run(segment, feeds, seconds);
}

Values Executor::step(int index, const Values& feeds, double* seconds) {
  const StepAction& action = m_.plan.at(static_cast<size_t>(index));
  const size_t tail = m_.segments.size() - 1;
  Values head = run(0, feeds, seconds);
  Values state;
  for (auto& in : m_.segments[1].inputs)
    if (streams_.count(in.name)) state[in.name] = head.at(in.name);
  auto run_group = [&](size_t g) {
    Values out = run(g, merged(head, state), seconds);
    Values next;
    for (auto& o : m_.segments[g].outputs) next[o.name] = out.at(o.name);
    state = std::move(next);
  };
  if (!cache_ || !action.cached) {
    if (index == 0) deltas_.clear(), last_full_ = -1;
    std::map<int, Values> marks;
    for (size_t g = 1; g < tail; ++g) {
      const SegmentInfo& seg = m_.segments[g];
      if (cache_)
        for (auto& r : action.record)
          if (r.first == seg.start) marks[seg.start] = state;
      run_group(g);
      if (!cache_) continue;
      for (auto& r : action.record) {
        if (r.second != seg.stop) continue;
        Values d;
        for (auto& [k, v] : state) d[k] = sub(v, marks.at(r.first).at(k));
        deltas_[r] = std::move(d);
      }
    }
    last_full_ = index;
  } else {
    auto r = action.range;
    if (!deltas_.count(r) || last_full_ < 0 || last_full_ >= index)
      throw Error("step " + std::to_string(index) + " | cached step over blocks [" + std::to_string(r.first) + "," +
                  std::to_string(r.second) + ") has no Δ recorded by an earlier full step. Expected: steps run in order from step 0.");
    for (size_t g = 1; g < tail; ++g) {
      const SegmentInfo& seg = m_.segments[g];
      if (seg.start == r.first) {
        Values next;
        for (auto& [k, d] : deltas_.at(r)) next[k] = add(state.at(k), d);
        state = std::move(next);
      }
      if (r.first <= seg.start && seg.start < r.second) continue;
      run_group(g);
    }
  }
  return run(tail, merged(head, state), seconds);
}

}  // namespace deltadit::detail
