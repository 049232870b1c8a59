"""Export stage ``--text-encoder``: the pipeline's caption encoder as one more ONNX graph in the bundle.

    text_encoder/model.onnx (+ .data)   input_ids, attention_mask int64 [batch, L] -> prompt_embeds float32 [batch, L, D]
    text_encoder/tokenizer.json         the tokenizer as the pipeline runs it, padding / truncation set to L

Which conditioning kinds have an exportable encoder is data (:data:`HEAD_INPUTS`, keyed by the model
spec's ``conditioning``); the encoder and tokenizer are those the runtime's conditioner of that kind
loads. The graph is always FP32 and is checked on ONNX Runtime against PyTorch like every segment. The
manifest section it returns is parsed by deltadit/manifest_text_encoder.py; the contract for other
runtimes is runtime/cpp/TEXT_ENCODER.md.
"""

from __future__ import annotations

from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.manifest_text_encoder import GRAPH, TOKENIZER
from deltadit.models.spec import Segment
from deltadit.presets import Preset

# Conditioning kind (the spec's ``conditioning``) -> which head input each text-encoder tensor feeds. A kind
# missing here has no exportable text encoder; the encoder itself is the runtime's conditioner of that kind.
HEAD_INPUTS = {"t5": {"encoder_hidden_states": "prompt_embeds", "encoder_attention_mask": "attention_mask"}}
PARTS = {"t5": ("tokenizer", "text_encoder")}  # the pipeline subfolders that conditioner loads
SEGMENT = Segment("text_encoder", "text_encoder", None, ("input_ids", "attention_mask"), ("prompt_embeds",))


def check_text_encoder(preset: Preset, weights: str | None, random_init: bool) -> None:
    """Refuse ``--text-encoder`` before any work where it cannot be exported (one line, the fix)."""
    from deltadit.runtime.conditioning import components_root

    kind = preset.spec.conditioning
    if kind not in HEAD_INPUTS:
        raise DeltaDiTError(
            f"--text-encoder | model {preset.name} ({preset.arch}) is conditioned by '{kind}', which has no "
            f"exportable text encoder (supported: {', '.join(HEAD_INPUTS)} caption encoders, e.g. PixArt-α / Σ and "
            "the embedded animals model). Expected: leave out --text-encoder for this model.")
    if random_init:
        raise DeltaDiTError("--text-encoder | a --random-init export has no text encoder to put in the bundle. "
                            "Expected: --weights DIR, a pipeline folder with tokenizer/ and text_encoder/.")
    root, looked = components_root(weights or preset.source)
    missing = [f"{sub}/" for sub in PARTS[kind] if root is None or not (root / sub).is_dir()]
    if missing:
        raise DeltaDiTError(
            f"--text-encoder | {', '.join(missing)} not found (looked in {'; '.join(looked) or 'nowhere'}). Expected: "
            f"--weights DIR, the model's diffusers pipeline folder with {' and '.join(s + '/' for s in PARTS[kind])}.")


def export_text_encoder(target, preset: Preset, source: str, opset: int, tolerance: float) -> dict:
    """Stage: the tokenizer + encoder that ``deltadit generate`` would load from ``source``'s pipeline folder
    (runtime/conditioning.py), into ``target.work/text_encoder/``; the graph is checked on ONNX Runtime
    (CPU) against PyTorch within ``tolerance`` (relative to the output's max magnitude). Returns the
    manifest's ``text_encoder`` section."""
    import torch

    from deltadit.bundle import sha256_file
    from deltadit.export.onnx import export_segment
    from deltadit.runtime.conditioning import components_root, make_conditioner

    kind, length = preset.spec.conditioning, preset.text_len
    conditioner = make_conditioner(kind, *components_root(source), length, preset.transformer)
    target.claim("text_encoder/*")
    graph = target.work / GRAPH
    graph.parent.mkdir(exist_ok=True)
    ids = _write_tokenizer(conditioner.tokenizer, target.work / TOKENIZER, length)
    # Batch 2 as a generation feeds it: the negative prompt "" and a prompt the model knows.
    prompt = f"a {preset.prompts[0]}" if preset.prompts else "a photo of a cat on the grass"
    rows = [conditioner.tokenize(text) for text in ("", prompt)]
    feeds = dict(zip(SEGMENT.inputs, (torch.cat(x) for x in zip(*rows))))
    module = _last_hidden_state(conditioner.encoder.float())  # FP32 whatever dtype the checkpoint has
    written = export_segment(module, SEGMENT, feeds, graph, opset)
    _fix_sequence_axis(graph, length)
    check, width = _check(target.work, module, feeds, tolerance)
    return {
        "files": [{"path": str(f.relative_to(target.work)), "sha256": sha256_file(f)} for f in written],
        "tokenizer": {"path": TOKENIZER, "sha256": sha256_file(target.work / TOKENIZER)},
        "max_length": length, **ids, "lowercase": conditioner.lowercase,
        "inputs": [{"name": n, "shape": ["batch", length], "dtype": "int64"} for n in SEGMENT.inputs],
        "outputs": [{"name": "prompt_embeds", "shape": ["batch", length, width], "dtype": "float32"}],
        "head_inputs": dict(HEAD_INPUTS[kind]), "check": check,
    }


def _write_tokenizer(tokenizer, path: Path, length: int) -> dict:
    """Write the tokenizer as the pipeline runs it (transformers' fast backend, which may differ from the
    folder's own file, e.g. T5's legacy pre-tokenizer setting), padded / truncated to ``length``; return
    the manifest's ids. eos_id is what the post-processor appends to an empty prompt (None: nothing)."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.pad_token_id is None:
        raise DeltaDiTError("--text-encoder | the pipeline's tokenizer has no fast (tokenizers) backend or no pad token. "
                            "Expected: a tokenizer folder with tokenizer.json (or one transformers converts).")
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.no_truncation()
    appended = tok.encode("").ids
    if len(appended) > 1:
        raise DeltaDiTError(f"--text-encoder | the tokenizer adds {len(appended)} special tokens to a prompt. Expected: "
                            "a T5-style tokenizer that appends at most an end-of-sequence token.")
    tok.enable_truncation(length)
    tok.enable_padding(length=length, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    tmp = path.with_name(path.name + ".raw")
    tok.save(str(tmp))
    tmp.replace(path)
    return {"pad_id": tokenizer.pad_token_id, "eos_id": appended[0] if appended else None,
            "unk_id": tokenizer.unk_token_id}


def _fix_sequence_axis(graph: Path, length: int) -> None:
    """The tracer leaves the output's sequence axis symbolic; the contract fixes it to ``length`` (L)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)  # the weights stay in model.onnx.data
    for out in model.graph.output:
        dim = out.type.tensor_type.shape.dim[1]
        dim.Clear()
        dim.dim_value = length
    onnx.save(model, str(graph))


def _check(work: Path, module, feeds: dict, tolerance: float) -> tuple[dict, int]:
    """(error vs PyTorch, embedding width D); raises above ``tolerance``."""
    import onnxruntime as ort
    import torch

    from deltadit.export.onnx import compare

    session = ort.InferenceSession(str(work / GRAPH), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = {"prompt_embeds": module(**feeds)}
    got = dict(zip(SEGMENT.outputs, session.run(None, {k: v.numpy() for k, v in feeds.items()})))
    err = compare(got, reference)["prompt_embeds"]
    if err["rel"] > tolerance:
        raise DeltaDiTError(f"text encoder {GRAPH} | ONNX Runtime differs from PyTorch by {err['rel']:.2e} (relative; "
                            f"max abs {err['max_abs']:.2e}). Expected: <= {tolerance:.0e}; the bundle was not written.")
    return err, int(reference["prompt_embeds"].shape[-1])


def _last_hidden_state(encoder):
    """The encoder as a module of (input_ids, attention_mask): (B, L) int64 x2 -> last hidden state (B, L, D) float32."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()

    return LastHiddenState().eval()
