"""Bring your own model: a :class:`~deltadit.presets.Preset` read from a diffusers folder or a cached hub id.

A folder is a pipeline (``model_index.json``, the transformer in ``transformer/``) or a transformer alone
(``config.json`` with ``_class_name``). The architecture and dims come from the transformer's config.json,
the sampler from the pipeline's ``scheduler/scheduler_config.json``, the VAE factor from ``vae/config.json``;
what a folder does not say comes from :data:`DEFAULTS` (the diffusers pipelines' own defaults), and the plan
is the paper's, scaled to the model's blocks and steps (:func:`scaled_plan`). Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from fractions import Fraction
from math import floor
from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.presets import Preset, available, checked, unknown_keys
from deltadit.schedulers import SCHEDULERS
from deltadit.sources import EMBEDDED, is_embedded, local_folder


@dataclass(frozen=True)
class Defaults:
    """Sampling values of an architecture's diffusers pipeline, for what a model folder does not say.
    resolution: pixels per side; None = the transformer's sample_size x the VAE factor."""

    steps: int
    guidance_scale: float
    text_len: int  # caption tokens the pipeline encodes (max_sequence_length)
    scheduler: str  # used when the folder has no scheduler deltadit knows
    resolution: int | None = None


DEFAULTS = {
    "pixart": Defaults(20, 4.5, 120, "dpm-solver++"),  # PixArtAlphaPipeline
    "dit": Defaults(20, 4.0, 0, "dpm-solver++"),  # DiTPipeline: class labels, no caption
    "sd3": Defaults(28, 7.0, 333, "flow-euler"),  # StableDiffusion3Pipeline: 77 CLIP + 256 T5 tokens
    "flux": Defaults(28, 3.5, 512, "flow-euler", resolution=1024),  # FluxPipeline, FLUX.1-dev (guidance input)
}
# (arch, fact, value, changes): applied when the folder's fact has that value. Facts: the transformer config's
# keys and "pipeline" (model_index.json's _class_name).
REFINEMENTS = (
    ("pixart", "pipeline", "PixArtSigmaPipeline", {"text_len": 300}),
    ("flux", "guidance_embeds", False, {"steps": 4, "guidance_scale": 0.0, "text_len": 256}),  # FLUX.1-schnell
)
VAE_SCALE = 8  # pixels per latent pixel when the folder has no vae/config.json (SD-style VAEs)

RESAVE = "Expected: the files as diffusers' save_pretrained wrote them (re-save or re-download the model)."


def load(name: str) -> Preset:
    """The preset of ``name``: a folder, ``embedded:NAME`` or a hub id already in the local cache."""
    folder = local_folder(name)
    if folder is None:
        raise DeltaDiTError(
            f"model | '{name}' is not a preset, a .toml file, a model folder or a hub id in the local cache. "
            f"Expected: a preset ({', '.join(available())}), a .toml path, a diffusers pipeline folder (with "
            "model_index.json) or transformer folder (with config.json), or a hub id already downloaded into the "
            "cache (HF_HOME / HF_HUB_CACHE); deltadit downloads nothing.")
    if is_embedded(name):
        return preset_from_folder(folder, name=name[len(EMBEDDED):], source=name)
    # a cached hub id's folder is its snapshot (named by commit): name the preset after the repository
    return preset_from_folder(folder, name=folder.resolve().name if Path(name).expanduser().is_dir()
                              else name.rstrip("/").rsplit("/", 1)[-1])


def preset_from_folder(folder: Path, name: str | None = None, source: str | None = None) -> Preset:
    """A checked preset for the diffusers model in ``folder``. name: default the folder's name; source:
    where the exporter takes weights from, default the folder's absolute path."""
    folder = Path(folder).resolve()
    config_path, pipeline = _transformer_config(folder)
    raw = _read_json(config_path)
    arch = _arch(raw.get("_class_name"), config_path)
    config = _public(raw)
    index = _read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    facts = {**config, "pipeline": index.get("_class_name")}
    d = DEFAULTS[arch]
    for on_arch, fact, value, changes in REFINEMENTS:
        if on_arch == arch and _matches(facts.get(fact), value):
            d = replace(d, **changes)

    scheduler, scheduler_config, note = d.scheduler, {}, ""
    sched_path = folder / "scheduler" / "scheduler_config.json"
    if pipeline and sched_path.is_file():
        sched = _read_json(sched_path)
        scheduler_config = _public(sched)
        short = {cls: short for short, (cls, _) in SCHEDULERS.items()}.get(sched.get("_class_name"))
        if short is None:  # its config still sets the noise schedule (diffusers' from_config of another class)
            note = f"; its {sched.get('_class_name')} is not supported, sampling with {d.scheduler}"
        scheduler = short or d.scheduler
    vae_path = folder / "vae" / "config.json"
    vae_scale = VAE_SCALE
    if pipeline and vae_path.is_file():
        levels = _read_json(vae_path).get("block_out_channels")
        vae_scale = 2 ** (len(levels) - 1) if isinstance(levels, list) and levels else VAE_SCALE
    size = config.get("sample_size")
    resolution = d.resolution or (size * vae_scale if isinstance(size, int) else 1024)

    version = raw.get("_diffusers_version", "?")
    fix = (f"Expected: the diffusers version that wrote {config_path} ({version}) or newer, whose {{cls}} takes "
           "these arguments.")
    draft = Preset(name=name or folder.name, description=f"{raw['_class_name']} read from {folder}{note}", arch=arch,
                   source=source or str(folder), transformer=config, steps=d.steps, b=0, nc=0, interval=2,
                   variant="delta-dit", scheduler=scheduler, guidance_scale=d.guidance_scale, text_len=d.text_len,
                   resolution=resolution, scheduler_config=scheduler_config, vae_scale=vae_scale)
    checked(draft, unknown_keys(arch, config, fix))  # everything but the plan (b = N_c = 0 is always valid)
    return replace(draft, **scaled_plan(draft.num_blocks, d.steps)).check()

def scaled_plan(blocks: int, steps: int) -> dict:
    """The paper's PixArt plan scaled to a model: N_c = 3/4 of the blocks (21 of 28), b = 0.6 T (12 of 20),
    interval N = 2, variant delta-dit. Halves round up (6 blocks -> N_c = 5)."""
    return {"nc": _half_up(Fraction(3, 4) * blocks), "b": _half_up(Fraction(3, 5) * steps), "interval": 2,
            "variant": "delta-dit"}


def _half_up(x: Fraction) -> int:
    return floor(x + Fraction(1, 2))


def _transformer_config(folder: Path) -> tuple[Path, bool]:
    """(the transformer's config.json, whether ``folder`` is a pipeline)."""
    index = folder / "model_index.json"
    nested = folder / "transformer" / "config.json"
    if index.is_file() or nested.is_file():
        if not nested.is_file():
            kind = _read_json(index).get("_class_name", "pipeline")
            parts = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_dir())) or "none"
            raise DeltaDiTError(
                f"model {folder} | this {kind} folder has no transformer/config.json (its folders: {parts}). "
                f"Expected: a pipeline of a diffusion transformer ({_supported()}) whose transformer/ holds "
                "config.json and weights, or --model pointing at the transformer folder itself.")
        return nested, True
    if (folder / "config.json").is_file():
        return folder / "config.json", False
    raise DeltaDiTError(
        f"model {folder} | has neither model_index.json (a diffusers pipeline) nor config.json (a diffusers model). "
        "Expected: a folder diffusers' save_pretrained wrote: a pipeline with model_index.json and transformer/, or "
        "a transformer with config.json and weights.")


def _arch(class_name, config_path: Path) -> str:
    from deltadit.models.spec import _registry

    for spec in _registry().values():
        if spec.diffusers_class == class_name:
            return spec.arch
    problem = f"holds a {class_name}" if class_name else "has no _class_name"
    raise DeltaDiTError(f"model {config_path} | {problem}, not a diffusion transformer deltadit supports. "
                        f"Expected: the config.json of one of {_supported()}.")


def _supported() -> str:
    from deltadit.models.spec import _registry

    return ", ".join(s.diffusers_class for s in _registry().values())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DeltaDiTError(f"model {path} | is not readable JSON ({e}). {RESAVE}") from None
    if not isinstance(data, dict):
        raise DeltaDiTError(f"model {path} | is a JSON {type(data).__name__}, not an object. {RESAVE}")
    return data


def _public(config: dict) -> dict:
    """A diffusers config without its bookkeeping keys (_class_name, _diffusers_version, _name_or_path)."""
    return {k: x for k, x in config.items() if not k.startswith("_")}


def _matches(got, value) -> bool:
    return bool(got) is value if isinstance(value, bool) else got == value
