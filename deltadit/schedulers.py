"""The schedulers a bundle may name, as data (no torch import): short name -> (diffusers class, settings
applied over the model's scheduler config). The runtime builds them (deltadit.runtime.loop)."""

from __future__ import annotations

SCHEDULERS = {
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
SCHEDULER_NAMES = tuple(SCHEDULERS)
