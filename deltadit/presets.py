"""Named presets (configs/*.toml): model architecture, its diffusers config, the paper's plan and sampling."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.sources import EMBEDDED, resolve_source  # noqa: F401 - re-exported for presets users


@dataclass(frozen=True)
class Preset:
    """name: preset name.  arch: spec key.  source: where real weights come from (hub id).
    transformer: the diffusers transformer config.  steps/b/nc/interval/variant: the Δ-DiT plan.
    scheduler, guidance_scale (<= 1 means no CFG), text_len (caption tokens), resolution (px).
    vae_scale: pixels per latent pixel (8 for SD-style VAEs, 1 for a pixel-space model); decoder: "vae"
    (latents decode with the pipeline's VAE) or "pixels" (the latents are the image in [-1, 1])."""

    name: str
    description: str
    arch: str
    source: str
    transformer: dict
    steps: int
    b: int
    nc: int
    interval: int
    variant: str
    scheduler: str
    guidance_scale: float
    text_len: int
    resolution: int
    scheduler_config: dict = field(default_factory=dict)
    vae_scale: int = 8
    decoder: str = "vae"

    @property
    def latent_side(self) -> int:
        """Side of the transformer's input in latent pixels (resolution / VAE downscale)."""
        return self.resolution // self.vae_scale

    @property
    def macs_resolution(self) -> int:
        """The resolution the cost model expects (it divides by the usual VAE factor 8)."""
        return self.latent_side * 8

    @property
    def cfg_batch(self) -> int:
        """Samples the transformer sees per image: 2 with classifier-free guidance, else 1."""
        return 2 if self.guidance_scale > 1.0 else 1

    def with_overrides(self, **values) -> "Preset":
        """A copy with the non-None values replaced (CLI flags override preset values)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


DEFAULT = "animals"  # the embedded, trained default model

def available() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in resources.files("deltadit.configs").iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str) -> Preset:
    """Load a preset by name (``pixart``, ``pixart-1024``, ``dit-xl``, ``pixart-lcm``) or from a .toml path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text, name = path.read_text(), path.stem
    else:
        entry = resources.files("deltadit.configs") / f"{name_or_path}.toml"
        if not entry.is_file():
            raise DeltaDiTError(
                f"model | '{name_or_path}' is not a preset or a .toml file. Expected: one of {', '.join(available())}."
            )
        text, name = entry.read_text(), name_or_path
    d = tomllib.loads(text)
    try:
        plan, sampling = d["plan"], d["sampling"]
        return Preset(
            name=name, description=d.get("description", name), arch=d["arch"], source=d.get("source", ""),
            transformer=dict(d["transformer"]), steps=plan["steps"], b=plan["b"], nc=plan["nc"],
            interval=plan.get("interval", 2), variant=plan.get("variant", "delta-dit"),
            scheduler=sampling["scheduler"], guidance_scale=float(sampling["guidance_scale"]),
            text_len=int(sampling.get("text_len", 0)), resolution=int(sampling["resolution"]),
            scheduler_config=dict(d.get("scheduler_config", {})),
            vae_scale=int(sampling.get("vae_scale", 8)), decoder=sampling.get("decoder", "vae"),
        )
    except KeyError as e:
        raise DeltaDiTError(f"preset {name} | missing key {e}. Expected: the layout of configs/pixart.toml.") from None
