// The denoising loop: scheduler, classifier-free guidance and the plan (deltadit/runtime/loop.py's
// `denoise`, driven by the manifest's driver section instead of the Python spec table).
#pragma once

#include "deltadit/deltadit.hpp"
#include "manifest.hpp"
#include "ort.hpp"

namespace deltadit::detail {

// Final latents for one image from `request` (noise / seed, guidance, cache) with head inputs cond /
// uncond (batch 1 each; uncond needed only with guidance).
Result denoise(const Manifest& m, const Sessions& sessions, const Request& request, const Tensors& cond, const Tensors& uncond);

// Refuse a bundle the C++ runtime cannot drive (at open, before any session is made).
void check_drivable(const Manifest& m);

}  // namespace deltadit::detail
