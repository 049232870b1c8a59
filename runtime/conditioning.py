"""Conditioning and decoding around a bundle's transformer: prompt or class -> head inputs, latents -> image.

Which conditioner a model uses is data in its spec (``spec.conditioning``); this module maps each kind
to its implementation (:data:`CONDITIONERS`). Every part comes from a diffusers pipeline folder that
the user names (or the embedded model), loaded once and shared by concurrent generations.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from deltadit import validate
from deltadit.errors import DeltaDiTError
from deltadit.sources import local_folder, resolve_source


def components_root(source: str | None, pipeline: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """The diffusers pipeline folder to take text encoder / VAE from (``pipeline``, else ``source``: a
    folder, ``embedded:NAME`` or a hub id already in the local cache), and where it looked. Callers pass
    only what the user named (a CLI flag, an API argument, a preset), never a path read from a manifest."""
    cand = str(pipeline) if pipeline else source
    if not cand:
        return None, []
    where = Path(resolve_source(cand))
    return local_folder(cand), [str(where)] + ([] if where.is_dir() else [f"the local hub cache for '{cand}'"])


def _need(root: Path | None, looked: list[str], what: str, sub: str) -> Path:
    return _need_all(root, looked, {sub: what})[sub]


def _need_all(root: Path | None, looked: list[str], parts: dict[str, str]) -> dict[str, Path]:
    """{subfolder: path} for every ``parts`` entry (subfolder -> what it holds), or one error naming all missing."""
    missing = {sub: what for sub, what in parts.items() if root is None or not (root / sub).is_dir()}
    if not missing:
        return {sub: root / sub for sub in parts}
    where = "; ".join(looked + ([str(root / sub) for sub in missing] if root is not None else []))
    where = where or "nowhere (no --pipeline given and the bundle has no on-disk source)"
    raise DeltaDiTError(
        f"{', '.join(missing.values())} | not found. Looked in: {where}. Expected: --pipeline DIR, a diffusers "
        f"pipeline folder (or a hub id already in the local cache) with {', '.join(sub + '/' for sub in missing)} in "
        "it; the bundle holds only the transformer."
    )


class TextConditioner:
    """PixArt-α / Σ prompt encoding: the pipeline's preprocessing (lower-cased, stripped), tokens padded to
    the caption length, the caption encoder, and the negative prompt "" for CFG. Here the pipeline's
    tokenizer and T5; a bundle's own tokenizer.json and ONNX encoder subclass it (_token_ids / embed) in
    deltadit.runtime.text_encoder. Thread-safe: encoding is serialised (a fast tokenizer must not be used
    by two threads at once)."""

    lowercase = True

    def __init__(self, root: Path | None, looked: list[str], text_len: int):
        from transformers import AutoTokenizer, T5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(_need(root, looked, "tokenizer", "tokenizer"))
        self.encoder = T5EncoderModel.from_pretrained(_need(root, looked, "text encoder", "text_encoder")).eval()
        self.text_len = text_len
        self._uncond, self._lock = None, threading.Lock()

    def tokenize(self, text: str):
        """(input_ids, attention_mask), int64 (1, text_len), of the preprocessed prompt: padded, truncated,
        end-of-sequence appended."""
        return self._token_ids(text.lower().strip() if self.lowercase else text)

    def _token_ids(self, text: str):
        tokens = self.tokenizer([text], padding="max_length", max_length=self.text_len, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        return tokens.input_ids, tokens.attention_mask

    def embed(self, input_ids, attention_mask):
        """(1, L) token ids and mask -> caption embeddings (1, L, D)."""
        import torch

        with torch.no_grad():
            return self.encoder(input_ids, attention_mask=attention_mask)[0]

    def encode(self, text: str) -> dict:
        # The embeddings of padded positions are passed on as the encoder made them: the head masks them.
        ids, mask = self.tokenize(text)
        return {"encoder_hidden_states": self.embed(ids, mask).float(), "encoder_attention_mask": mask}

    def __call__(self, prompt: str) -> tuple[dict, dict]:
        with self._lock:
            if self._uncond is None:  # the negative prompt "" is the same for every call
                self._uncond = self.encode("")
            return self.encode(prompt), self._uncond


class ClassConditioner:
    """DiT class labels; the unconditional label is the extra 'null' class."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, label: int) -> tuple[dict, dict]:
        import torch

        label = validate.integer("--class", label, 0, self.num_classes - 1)
        return {"class_labels": torch.tensor([int(label)])}, {"class_labels": torch.tensor([self.num_classes])}


class VaeDecoder:
    """Latents -> image with the pipeline's VAE, as its pipeline decodes: ``latents / scaling_factor +
    shift_factor`` (SD3 / FLUX VAEs have a shift; PixArt / DiT have none and are decoded unchanged)."""

    def __init__(self, root: Path | None, looked: list[str]):
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(_need(root, looked, "VAE", "vae")).eval()

    def __call__(self, latents) -> np.ndarray:
        import torch

        latents = latents / self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:
            latents = latents + shift
        with torch.no_grad():
            image = self.vae.decode(latents, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()[0]


class PixelDecoder:
    """Pixel-space models (no VAE): the latents are the image in [-1, 1]."""

    def __call__(self, latents) -> np.ndarray:
        return (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()[0]


class PipelineTextConditioner:
    """Prompt encoding by the model's own diffusers pipeline class (its ``encode_prompt``), built with only
    its text parts, so the head inputs equal the pipeline's. ``encode(pipe, prompt) -> head inputs``;
    ``negative``: also encode the negative prompt "" (once: it is the same for every call) for CFG.
    Thread-safe: encoding is serialised (fast tokenizers must not be shared by two threads at once)."""

    def __init__(self, pipe, encode, negative: bool, expect: dict[str, tuple[int, ...]], root: Path | None):
        self.pipe, self._encode, self._lock = pipe, encode, threading.Lock()
        probe = self.encode("")  # the negative prompt; checked here so a wrong folder fails at load
        got = {k: tuple(probe[k].shape) for k in expect}
        if got != expect:
            raise DeltaDiTError(
                f"--pipeline {root} | its text encoders give {_shapes(got)}, but the bundle's transformer takes "
                f"{_shapes(expect)}. Expected: the pipeline folder of the model the bundle was exported from.")
        self._uncond = probe if negative else None

    def encode(self, prompt: str) -> dict:
        import torch

        with torch.no_grad():
            return {k: v.float() for k, v in self._encode(self.pipe, prompt).items()}

    def __call__(self, prompt: str) -> tuple[dict, dict | None]:
        with self._lock:
            return self.encode(prompt), self._uncond


def _shapes(shapes: dict) -> str:
    return " and ".join(f"{k} {v}" for k, v in shapes.items())


def _load_parts(root: Path | None, looked: list[str], parts: tuple[tuple[str, str, str], ...]) -> dict:
    """{subfolder: loaded part} for (subfolder, what it holds, transformers class) rows; from_pretrained
    returns models in eval mode."""
    import transformers

    paths = _need_all(root, looked, {sub: what for sub, what, _ in parts})
    return {sub: getattr(transformers, cls).from_pretrained(paths[sub]) for sub, _, cls in parts}


def _head_shapes(config: dict, text_len: int) -> dict[str, tuple[int, ...]]:
    return {"encoder_hidden_states": (1, text_len, config["joint_attention_dim"]),
            "pooled_projections": (1, config["pooled_projection_dim"])}


# (subfolder, what it holds, transformers class) as StableDiffusion3Pipeline / FluxPipeline load them.
SD3_CLIP = (("tokenizer", "CLIP-L tokenizer", "AutoTokenizer"),
            ("text_encoder", "CLIP-L text encoder", "CLIPTextModelWithProjection"),
            ("tokenizer_2", "CLIP-G tokenizer", "AutoTokenizer"),
            ("text_encoder_2", "CLIP-G text encoder", "CLIPTextModelWithProjection"))
SD3_T5 = (("tokenizer_3", "T5 tokenizer", "AutoTokenizer"), ("text_encoder_3", "T5 text encoder", "T5EncoderModel"))
FLUX_TEXT = (("tokenizer", "CLIP tokenizer", "AutoTokenizer"), ("text_encoder", "CLIP text encoder", "CLIPTextModel"),
             ("tokenizer_2", "T5 tokenizer", "AutoTokenizer"), ("text_encoder_2", "T5 text encoder", "T5EncoderModel"))


def sd3_conditioner(root, looked, text_len: int, config: dict) -> PipelineTextConditioner:
    """StableDiffusion3Pipeline.encode_prompt: CLIP-L + CLIP-G hidden states (padded to the T5 width) then
    T5's, pooled CLIP-L + CLIP-G; negative prompt "". text_len = CLIP's 77 + T5's max_sequence_length. A
    folder without text_encoder_3/ runs SD3 without T5 (its part of the embeddings is zeros), as the
    pipeline does with text_encoder_3=None."""
    import types
    import warnings

    from diffusers import StableDiffusion3Pipeline

    t5 = root is not None and (root / "text_encoder_3").is_dir()
    parts = _load_parts(root, looked, SD3_CLIP + (SD3_T5 if t5 else ()))
    if not t5:
        warnings.warn(f"SD3 text encoder | {root} has no text_encoder_3/: prompts are encoded without T5 (zeros in "
                      "its place, as StableDiffusion3Pipeline with text_encoder_3=None), which lowers image quality.",
                      stacklevel=2)
    pipe = StableDiffusion3Pipeline(transformer=None, vae=None, scheduler=None, **{"tokenizer_3": None,
                                    "text_encoder_3": None, **parts})
    if not t5:  # the pipeline sizes the zeros from its transformer's config
        width = types.SimpleNamespace(joint_attention_dim=config["joint_attention_dim"])
        pipe.transformer = types.SimpleNamespace(config=width)
    t5_len = text_len - pipe.tokenizer_max_length
    if t5_len < 1:
        raise DeltaDiTError(f"bundle | caption length {text_len} leaves no T5 tokens after CLIP's "
                            f"{pipe.tokenizer_max_length}. Expected: text_len = {pipe.tokenizer_max_length} + T5 "
                            "max_sequence_length (re-export the bundle).")

    def encode(pipe, prompt):
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=t5_len)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}  # (1, 77 + T5, D), (1, P)

    return PipelineTextConditioner(pipe, encode, True, _head_shapes(config, text_len), root)


def flux_conditioner(root, looked, text_len: int, config: dict) -> PipelineTextConditioner:
    """FluxPipeline.encode_prompt: T5 hidden states (text_len = max_sequence_length) and CLIP's pooled
    output. No negative prompt: FLUX's guidance is an input (txt_ids / guidance come from the runtime)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(transformer=None, vae=None, scheduler=None, **_load_parts(root, looked, FLUX_TEXT))

    def encode(pipe, prompt):
        embeds, pooled, _ = pipe.encode_prompt(prompt, None, max_sequence_length=text_len)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}  # (1, text_len, D), (1, P)

    return PipelineTextConditioner(pipe, encode, False, _head_shapes(config, text_len), root)


def text_conditioner(root, looked, text_len: int, config: dict) -> TextConditioner:
    return TextConditioner(root, looked, text_len)


def class_conditioner(root, looked, text_len: int, config: dict) -> ClassConditioner:
    return ClassConditioner(config["num_embeds_ada_norm"])


# spec.conditioning -> loader(root, looked, text_len, config); "class" needs no pipeline folder.
CONDITIONERS = {"t5": text_conditioner, "class": class_conditioner, "sd3": sd3_conditioner, "flux": flux_conditioner}
NEEDS_FOLDER = {"t5": True, "class": False, "sd3": True, "flux": True}


def make_conditioner(kind: str, root, looked, text_len: int, config: dict):
    if kind not in CONDITIONERS:
        raise DeltaDiTError(f"conditioning | '{kind}' has no implementation in this deltadit. Expected: one of "
                            f"{', '.join(CONDITIONERS)}.")
    return CONDITIONERS[kind](root, looked, text_len, config)
