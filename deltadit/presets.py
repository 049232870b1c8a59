"""Named presets (configs/*.toml): model architecture, its diffusers config, the paper's plan and sampling."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from deltadit import validate as v
from deltadit.errors import DeltaDiTError, raise_if, read_json
from deltadit.schedulers import SCHEDULER_NAMES
from deltadit.sources import is_embedded


@dataclass(frozen=True)
class Preset:
    """name: preset name.  arch: spec key.  source: where real weights come from (hub id, folder or embedded:NAME).
    transformer: the diffusers transformer config.  steps/b/nc/interval/variant: the Δ-DiT plan.
    scheduler, guidance_scale (<= 1 means no CFG), text_len (caption tokens), resolution (px).
    vae_scale: pixels per latent pixel (8 for SD-style VAEs, 1 for a pixel-space model); decoder: "vae"
    (latents decode with the pipeline's VAE) or "pixels" (the latents are the image in [-1, 1]).
    prompts: the words a trained-here model knows (its caption classes); empty for open-vocabulary models.
    Loading and :meth:`with_overrides` check every value (:meth:`check`)."""

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
    prompts: tuple[str, ...] = ()

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
        """Samples the transformer sees per image: 2 with classifier-free guidance, else 1 (also for
        models whose guidance is a model input, FLUX.1-dev)."""
        return 2 if self.guidance_scale > 1.0 and not self.spec.embedded_guidance else 1

    @property
    def spec(self):
        from deltadit.models.spec import get_spec

        return get_spec(self.arch)

    @property
    def num_blocks(self) -> int:
        return self.spec.num_blocks(self.transformer)

    def block_macs(self):
        """MACs per sample of each block at this preset's resolution and caption length."""
        return self.spec.block_macs(self.transformer, self.text_len, self.macs_resolution)

    def plan(self, budget: float | None = None):
        """The preset's Δ-DiT plan (or the one ``budget`` chooses, paper Eq. 6-7), cut at the model's stages."""
        from deltadit.plan import build_plan, plan_from_budget

        cuts = self.spec.stage_cuts(self.transformer)
        if budget is not None:
            return plan_from_budget(self.steps, self.num_blocks, budget, self.b, self.variant, cuts)
        return build_plan(self.steps, self.num_blocks, self.nc, self.b, self.interval, self.variant, cuts)

    def with_blocks(self, blocks: int | None) -> "Preset":
        """This preset cut to its first ``blocks`` transformer blocks (None or all: itself), N_c scaled in
        proportion (benchmarks time a few blocks at the full width)."""
        if not blocks or blocks == self.num_blocks:
            return self
        return self.with_overrides(transformer={**self.transformer, "num_layers": blocks},
                                   nc=round(self.nc * blocks / self.num_blocks))

    def with_overrides(self, **values) -> "Preset":
        """A checked copy with the non-None values replaced (CLI flags override preset values)."""
        return replace(self, **{k: x for k, x in values.items() if x is not None}).check()

    def check(self) -> "Preset":
        """Return self, or raise one DeltaDiTError listing every value out of range."""
        return checked(self)

    def problems(self) -> list[str]:
        """One message per bad value (architecture, plan, sampling, scheduler, prompts)."""
        from deltadit.models.spec import known_archs
        from deltadit.plan import plan_problems

        out = []

        def need(check, *args, **kwargs):
            try:
                return check(*args, **kwargs)
            except DeltaDiTError as e:
                out.append(str(e))
                return None

        if self.arch not in known_archs():
            out.append(f"arch | {self.arch!r:.40} is not supported. Expected: one of {', '.join(known_archs())}.")
        if not isinstance(self.transformer, dict):
            out.append(f"transformer | a {type(self.transformer).__name__} is not a config. "
                       "Expected: a [transformer] table with the diffusers model config.")
            blocks = patch = None
        else:
            missing = [k for k in REQUIRED_KEYS + ARCH_KEYS.get(self.arch, ()) if k not in self.transformer]
            if missing:
                out.append(f"transformer | missing {', '.join(missing)} (block count, MACs, segment shapes). Expected: "
                           "these keys in the [transformer] table, as in the model's transformer/config.json.")
            for key, top in (("num_layers", v.MAX_BLOCKS), ("patch_size", 64)):
                if key in self.transformer:
                    need(v.integer, f"transformer {key}", self.transformer[key], 1, top)
            blocks = patch = None
            if self.arch in known_archs() and not out:
                blocks = need(v.integer, "transformer blocks", self.num_blocks, 1, v.MAX_BLOCKS)
                patch = self.spec.token_side(self.transformer)
        # a bad num_layers is reported above; the plan is then checked against the largest block count
        out += plan_problems(self.steps, blocks or v.MAX_BLOCKS, self.nc, self.b, self.interval, self.variant)
        need(v.real, "guidance_scale", self.guidance_scale, 0, v.MAX_GUIDANCE, " (<= 1 means no guidance)")
        need(v.integer, "text_len", self.text_len, 0, v.MAX_TEXT_LEN, " caption tokens")
        vae = need(v.integer, "vae_scale", self.vae_scale, 1, 64, " pixels per latent pixel (8 for SD VAEs, 1 in pixel space)")
        res = need(v.integer, "resolution (--resolution)", self.resolution, 1, v.MAX_RESOLUTION, " pixels")
        if None not in (res, patch, vae):
            multiple = patch * vae
            if res % multiple:
                out.append(f"resolution (--resolution) | {res} px is not a multiple of {multiple} (token side {patch} "
                           f"x vae_scale {vae}). Expected: a positive multiple of {multiple} up to {v.MAX_RESOLUTION}, "
                           f"e.g. {max(multiple, res // multiple * multiple)}.")
            elif res // vae > v.MAX_LATENT_SIDE:
                out.append(f"resolution (--resolution) | {res} px is {res // vae} latent pixels per side. "
                           f"Expected: at most {v.MAX_LATENT_SIDE * vae} px.")
        if self.decoder not in DECODERS:
            out.append(f"decoder | {self.decoder!r:.40} is unknown. Expected: one of {', '.join(DECODERS)}.")
        if self.scheduler not in SCHEDULER_NAMES:
            out.append(f"scheduler | {self.scheduler!r:.40} is unknown. Expected: one of {', '.join(SCHEDULER_NAMES)}.")
        if not isinstance(self.scheduler_config, dict):
            out.append(f"scheduler_config | a {type(self.scheduler_config).__name__} is not a config. "
                       "Expected: a [scheduler_config] table.")
        elif "num_train_timesteps" in self.scheduler_config:
            need(v.integer, "scheduler_config num_train_timesteps", self.scheduler_config["num_train_timesteps"], 1,
                 v.MAX_TRAIN_TIMESTEPS)
        if not (isinstance(self.prompts, tuple) and all(isinstance(w, str) and w.strip() for w in self.prompts)):
            out.append(f"prompts | {self.prompts!r:.60} is not a list of words. Expected: e.g. prompts = [\"bear\", \"cat\"].")
        return out


DEFAULT = "animals"  # the embedded, trained default model
DECODERS = ("vae", "pixels")
SECTIONS = ("plan", "sampling", "transformer", "scheduler_config")  # the tables of a preset file
# Transformer config keys the specs read without a default (deltadit/models/*: block count, MACs, head inputs,
# guidance); diffusers' own defaults are not copied here, so a preset must state them.
REQUIRED_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size", "in_channels")
ARCH_KEYS = {
    "pixart": ("out_channels", "sample_size", "caption_channels"),
    "dit": ("out_channels", "num_embeds_ada_norm"),
    "sd3": ("joint_attention_dim", "pooled_projection_dim"),
    "flux": ("num_single_layers", "joint_attention_dim", "pooled_projection_dim"),
}


def unknown_prompt_warning(preset_name: str, prompt: str | None) -> str | None:
    """A one-line warning when ``prompt`` names none of the words preset ``preset_name`` knows (its
    ``prompts``), else None (also for presets without a word list, or that no longer load)."""
    if preset_name not in available():  # a bundle of a .toml or a folder: no word list to check against
        return None
    try:
        words = load_preset(preset_name).prompts
    except DeltaDiTError:
        return None
    if not words or prompt is None or set(re.findall(r"\w+", prompt.lower())) & {w.lower() for w in words}:
        return None
    return (f"warning: prompt {prompt!r} names none of the words model '{preset_name}' was trained on, so the image "
            f"will not follow it. Expected: one of {', '.join(words)} (e.g. \"a {words[0]}\").")


def available() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in resources.files("deltadit.configs").iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str) -> Preset:
    """Load a preset: a name (:func:`available`), a .toml path, a diffusers pipeline or transformer folder, or a
    hub id already in the local cache (the last two: :func:`deltadit.byo.preset_from_folder`; nothing downloaded).
    A preset name wins over a folder of the same name in the working directory (write ./NAME for the folder)."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml":
        if not path.is_file():
            raise DeltaDiTError(f"model | the preset file {path} does not exist. Expected: the path of a .toml file "
                                "laid out like configs/pixart.toml, or a preset name: " + ", ".join(available()) + ".")
        return _from_toml(path.read_text(), path.stem, base=path.resolve().parent)
    if name_or_path in available():  # a bare name: "/x/y" would join to a file outside the package
        return _from_toml((resources.files("deltadit.configs") / f"{name_or_path}.toml").read_text(), name_or_path)
    from deltadit import byo

    return byo.load(name_or_path)


def _from_toml(text: str, name: str, base: Path | None = None) -> Preset:
    """The preset a .toml text describes. base: the folder of a user's file (None for the packaged presets):
    its relative ``source`` resolves there, and its [transformer] keys are checked against the diffusers class
    (which imports diffusers and torch, so the packaged presets skip it: tests/test_presets.py checks them)."""
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DeltaDiTError(f"preset {name} | not valid TOML ({e}). Expected: the layout of configs/pixart.toml.") from None
    wrong = [f"[{k}] is a {type(d[k]).__name__}" for k in SECTIONS if k in d and not isinstance(d[k], dict)]
    if wrong:
        raise DeltaDiTError(f"preset {name} | {', '.join(wrong)}, not a table. Expected: the layout of "
                            "configs/pixart.toml (e.g. a [transformer] section of key = value lines).")
    source = d.get("source", "")
    try:
        plan, sampling = d["plan"], d["sampling"]
        preset = Preset(
            name=name, description=d.get("description", name), arch=d["arch"],
            source=source if base is None else _relative_to(source, base),
            transformer=dict(d["transformer"]), steps=plan["steps"], b=plan["b"], nc=plan["nc"],
            interval=plan.get("interval", 2), variant=plan.get("variant", "delta-dit"),
            scheduler=sampling["scheduler"], guidance_scale=_float(sampling["guidance_scale"]),
            text_len=sampling.get("text_len", 0), resolution=sampling["resolution"],
            scheduler_config=dict(d.get("scheduler_config", {})),
            vae_scale=sampling.get("vae_scale", 8), decoder=sampling.get("decoder", "vae"),
            prompts=tuple(d["prompts"]) if isinstance(d.get("prompts"), list) else d.get("prompts", ()),
        )
    except KeyError as e:
        raise DeltaDiTError(f"preset {name} | missing key {e}. Expected: the layout of configs/pixart.toml.") from None
    if base is None:
        return preset.check()
    fix = "Expected: the argument names of diffusers.{cls} (the keys of its config.json); fix or remove them."
    return checked(preset, unknown_keys(preset.arch, preset.transformer, fix))


def checked(preset: Preset, extra: list[str] | tuple[str, ...] = ()) -> Preset:
    """``preset`` if it and ``extra`` (more problems found while reading it) are fine, else one DeltaDiTError."""
    problems = preset.problems() + list(extra)
    raise_if(problems, f"preset {preset.name} | invalid values:" if len(problems) > 1 else None)
    return preset


def unknown_keys(arch: str, config: dict, fix: str) -> list[str]:
    """A problem naming the keys of ``config`` that the ``arch`` diffusers class does not take (with the nearest
    right spelling), else []. fix: the "Expected: ..." text, where ``{cls}`` is the class name. Imports
    diffusers (and torch); skipped where diffusers is not installed (the plan needs only the keys' values)."""
    import difflib
    import inspect

    from deltadit.models.spec import get_spec, known_archs

    if arch not in known_archs() or not isinstance(config, dict):
        return []  # Preset.problems reports these
    name = get_spec(arch).diffusers_class
    try:
        import diffusers

        params = inspect.signature(getattr(diffusers, name).__init__).parameters
    except (ImportError, AttributeError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    known = [k for k in params if k != "self"]
    unknown = [k for k in config if k not in known]
    if not unknown:
        return []
    named = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, n=1)) else "")
             for k in unknown]
    return [f"transformer | {', '.join(named)} {'is not an argument' if len(named) == 1 else 'are not arguments'} "
            f"of diffusers {name}. " + fix.format(cls=name)]


def _relative_to(source, base: Path):
    """A .toml's ``source`` that is a relative folder, against the .toml's folder (not the working directory):
    when it exists there or starts with "." ("./weights", "../model"). Hub ids ("org/name"), ``embedded:NAME``
    and absolute paths stay as written."""
    if not isinstance(source, str) or not source or is_embedded(source):
        return source
    path = Path(source).expanduser()
    if path.is_absolute():
        return str(path)
    if (base / path).exists() or source.startswith("."):
        return str((base / path).resolve())
    return source


def _float(x):
    """Ints as floats (TOML ``4`` for 4.0); anything else unchanged, for :meth:`Preset.check` to judge."""
    return float(x) if isinstance(x, int) and not isinstance(x, bool) else x


def load_plan_file(path, preset: "Preset"):
    """The DeltaPlan stored in ``path`` (DeltaPlan.to_json, or `deltadit plan --json`'s object with a "plan"
    key), refused in one line unless it was built for ``preset``'s block count and cut at its stage cuts
    (more cuts are fine: a plan split by --max-group-blocks)."""
    from pathlib import Path

    from deltadit.plan import DeltaPlan

    path, how = Path(path), "Expected: a plan file written by `deltadit tune` or `deltadit plan --json`."
    d = read_json(path, "--plan", how)
    if isinstance(d, dict) and "plan" in d and "steps" not in d:
        d = d["plan"]
    try:
        plan = DeltaPlan.from_dict(d)
    except DeltaDiTError as e:
        raise DeltaDiTError(f"--plan {path} | {e}") from None
    cuts = tuple(preset.spec.stage_cuts(preset.transformer))
    if plan.num_blocks != preset.num_blocks or not set(cuts) <= set(plan.cuts):
        raise DeltaDiTError(f"--plan | {path} is a plan for {plan.num_blocks} blocks (cuts {list(plan.cuts)}), but "
                            f"model '{preset.name}' has {preset.num_blocks} (stage cuts {list(cuts)}). Expected: a plan "
                            f"made for this model, e.g. by `deltadit tune --model {preset.name}`.")
    return plan
