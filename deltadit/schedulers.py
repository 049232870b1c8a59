"""The schedulers a bundle may name, as data (no torch import): short name -> (diffusers class, settings
applied over the model's scheduler config). The runtime builds them (deltadit.runtime.loop)."""

from __future__ import annotations

SCHEDULERS = {
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    # Rectified flow (SD3 / SD3.5 with shift 3.0, FLUX with resolution-dependent shift); no CFG noise scaling.
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
}
SCHEDULER_NAMES = tuple(SCHEDULERS)
