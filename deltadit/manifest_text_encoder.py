"""The manifest's optional ``text_encoder`` section (a bundle exported with ``--text-encoder``), typed and checked.

The section describes one ONNX graph (prompt token ids -> caption embeddings) and its tokenizer file, and
which input of the bundle's head each of its tensors feeds. The contract for other runtimes is
runtime/cpp/TEXT_ENCODER.md; :func:`parse_text_encoder` enforces it so a runtime never meets a path
outside ``text_encoder/``, an id out of range or a shape the head would not take.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltadit.jsonfields import Fields, bad, check_relative_path

GRAPH = "text_encoder/model.onnx"
GRAPH_DATA = GRAPH + ".data"
TOKENIZER = "text_encoder/tokenizer.json"
OWNER = "text_encoder"  # the name its files are listed under in Manifest.files()
MAX_VOCAB = 1 << 24
# name -> (dtype, shape after the batch axis: "L" = max_length, "D" = the embedding width)
INPUTS = {"input_ids": ("int64", ("L",)), "attention_mask": ("int64", ("L",))}
OUTPUTS = {"prompt_embeds": ("float32", ("L", "D"))}


@dataclass(frozen=True)
class TextEncoderEntry:
    """A bundle's text encoder: ``files[0]`` the ONNX graph (then its external data), the tokenizer file,
    tokenization constants and ``head_inputs`` (head input name -> text-encoder tensor name)."""

    files: tuple  # FileEntry, ...
    tokenizer: object  # FileEntry
    max_length: int
    pad_id: int
    eos_id: int | None
    unk_id: int | None
    lowercase: bool
    inputs: tuple  # TensorDesc, ...
    outputs: tuple
    head_inputs: dict
    check: dict

    name = OWNER  # read_bundle's external-data check names the owner of a graph

    @property
    def graph(self) -> str:
        return self.files[0].path

    def all_files(self) -> list:
        return [*self.files, self.tokenizer]


def parse_text_encoder(f: Fields | None, text_len: int, head) -> TextEncoderEntry | None:
    """The section, or None when the bundle has none. ``head``: the parsed head SegmentEntry, whose inputs
    ``head_inputs`` must name with matching shapes; ``text_len``: export.text_len, which max_length must equal."""
    if f is None:
        return None
    from deltadit.manifest import _tensor

    where = f.where
    files = tuple(_file(Fields(raw, f"{where}.files[{i}]"), (GRAPH, GRAPH_DATA)[min(i, 1)])
                  for i, raw in enumerate(f.list("files", 2)))
    if not files:
        bad(f"{where}.files", "is empty", f"[{GRAPH}, its external data]")
    length = f.int("max_length", 1, 1 << 10)
    if length != text_len:
        bad(f"{where}.max_length", f"is {length} but export.text_len is {text_len}", "the head's caption length")
    ids = {key: f.int(key, 0, MAX_VOCAB - 1, optional=key != "pad_id") for key in ("pad_id", "eos_id", "unk_id")}
    inputs = tuple(_tensor(Fields(t, f"{where}.inputs[{i}]")) for i, t in enumerate(f.list("inputs", 2)))
    outputs = tuple(_tensor(Fields(t, f"{where}.outputs[{i}]")) for i, t in enumerate(f.list("outputs", 1)))
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else 0
    _check_io(f"{where}.inputs", inputs, INPUTS, length, width)
    _check_io(f"{where}.outputs", outputs, OUTPUTS, length, width)
    feeds = _head_inputs(f.obj("head_inputs"), {t.name: t for t in inputs + outputs}, head)
    check = f.data.get("check", {})
    return TextEncoderEntry(files, _file(f.obj("tokenizer"), TOKENIZER), length, ids["pad_id"], ids["eos_id"],
                            ids["unk_id"], f.bool("lowercase"), inputs, outputs, feeds,
                            check if isinstance(check, dict) else {})


def _file(f: Fields, expected: str):
    from deltadit.manifest import SHA256, FileEntry

    path = check_relative_path(f.str("path"), f"{f.where}.path")
    if path != expected:
        bad(f"{f.where}.path", f"is {path!r}", expected)
    return FileEntry(path, f.str("sha256", pattern=SHA256))


def _check_io(where: str, got: tuple, want: dict, length: int, width: int) -> None:
    expected = [{"name": n, "shape": ["batch", *(length if d == "L" else width for d in dims)], "dtype": dtype}
                for n, (dtype, dims) in want.items()]
    have = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in got]
    if have != expected:
        bad(where, f"are {have}", f"{expected}")


def _head_inputs(f: Fields, tensors: dict, head) -> dict:
    head_in = {t.name: t for t in head.inputs}
    feeds = {}
    for key, name in f.data.items():
        if key not in head_in:
            bad(f"{f.where}.{key}", "is not an input of the head segment", "one of " + ", ".join(head_in))
        if name not in tensors:
            bad(f"{f.where}.{key}", f"is {name!r}", "a text-encoder tensor: " + ", ".join(tensors))
        if tuple(tensors[name].shape[1:]) != tuple(head_in[key].shape[1:]):
            bad(f"{f.where}.{key}", f"names {name} of shape {list(tensors[name].shape)}, but the head takes "
                f"{list(head_in[key].shape)}", "equal shapes after the batch axis (re-export the bundle)")
        feeds[key] = name
    if not feeds:
        bad(f.where, "is empty", "the head inputs the text encoder feeds")
    return feeds
