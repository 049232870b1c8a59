"""A bundle's own text encoder (``deltadit-export --text-encoder``): prompt -> head inputs with nothing
from a pipeline folder.

Tokens come from the bundle's tokenizer.json (the ``tokenizers`` library, padded / truncated to the
manifest's ``max_length``), embeddings from its ONNX encoder on ONNX Runtime. Preprocessing, masking and
the negative prompt are :class:`TextConditioner`'s, so both paths give the same head inputs. The
contract for other runtimes: runtime/cpp/TEXT_ENCODER.md.
"""

from __future__ import annotations

import threading
from pathlib import Path

from deltadit.manifest_text_encoder import TextEncoderEntry
from deltadit.runtime.conditioning import TextConditioner


class BundleTextConditioner(TextConditioner):
    """:class:`TextConditioner` on a bundle's ``text_encoder`` section. ``root``: the bundle folder, already
    verified by read_bundle; providers: ONNX Runtime execution providers (default CPU)."""

    def __init__(self, root: str | Path, entry: TextEncoderEntry, providers: list[str] | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from deltadit.bundle import check_external_data

        root = Path(root)
        check_external_data(root, entry)  # the graph may read weights only from its own hashed files
        self.text_len, self.lowercase, self.entry = entry.max_length, entry.lowercase, entry
        self.tokenizer = Tokenizer.from_file(str(root / entry.tokenizer.path))
        # The manifest's length and pad id, whatever the file itself says.
        self.tokenizer.enable_truncation(entry.max_length)
        self.tokenizer.enable_padding(length=entry.max_length, pad_id=entry.pad_id)
        self.session = ort.InferenceSession(str(root / entry.graph), providers=providers or ["CPUExecutionProvider"])
        self._uncond, self._lock = None, threading.Lock()

    def _token_ids(self, text: str):
        import torch

        tokens = self.tokenizer.encode(text)
        return torch.tensor([tokens.ids]), torch.tensor([tokens.attention_mask])  # int64 (1, L) each

    def embed(self, input_ids, attention_mask):
        import torch

        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        return torch.from_numpy(self.session.run(["prompt_embeds"], feeds)[0])  # (1, L, D) float32


def bundle_conditioner(bundle) -> BundleTextConditioner:
    """The conditioner of a loaded bundle that carries its text encoder; on the bundle runner's ONNX Runtime
    providers when it runs on ONNX Runtime, else on CPU."""
    runner = bundle.runner
    providers = runner.providers if getattr(runner, "name", None) == "onnxrt" else None
    return BundleTextConditioner(bundle.root, bundle.manifest.text_encoder, providers)
