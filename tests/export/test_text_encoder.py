"""`deltadit-export --text-encoder`: the caption encoder and its tokenizer as hashed bundle files, described by
the manifest's `text_encoder` section (runtime/cpp/TEXT_ENCODER.md), refused where the model has none."""

import json
import shutil

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from deltadit import runtime
from deltadit.bundle import read_bundle, sha256_file
from deltadit.errors import DeltaDiTError
from deltadit.export import cli as export_cli
from deltadit.export.pipeline import export_bundle
from deltadit.manifest import Manifest
from deltadit.plan import build_plan
from tests.conftest import build_pixart, save_pipeline_folder
from tests.export.test_bundle import BLOCKS, STEPS, tiny_preset

PLAN = build_plan(STEPS, BLOCKS, 3, 12, 2, "delta-dit")


def export_with_text_encoder(tiny_bundle, folder):
    """The session's tiny PixArt bundle (PLAN) exported from conftest's pixart_folder (its word-level T5
    tokenizer: pad 0, eos 1, unk 2) with the text encoder. Returns (bundle, folder); shared, never changed."""
    return tiny_bundle("pixart", pipeline=True, build_engines=False, text_encoder=True), folder


@pytest.fixture
def exported(tiny_bundle, pixart_folder):
    return export_with_text_encoder(tiny_bundle, pixart_folder)


@pytest.fixture
def bundle(exported, tmp_path):
    """A private copy to tamper with."""
    return shutil.copytree(exported[0], tmp_path / "b")


def test_section_and_files_follow_the_contract(exported):
    import onnx

    root = exported[0]
    te = read_bundle(root).text_encoder
    assert [f.path for f in te.files] == ["text_encoder/model.onnx", "text_encoder/model.onnx.data"]
    assert te.tokenizer.path == "text_encoder/tokenizer.json"
    assert (te.max_length, te.pad_id, te.eos_id, te.unk_id, te.lowercase) == (5, 0, 1, 2, True)
    assert [(t.name, t.shape, t.dtype) for t in te.inputs + te.outputs] == [
        ("input_ids", ("batch", 5), "int64"), ("attention_mask", ("batch", 5), "int64"),
        ("prompt_embeds", ("batch", 5, 32), "float32")]
    assert te.head_inputs == {"encoder_hidden_states": "prompt_embeds", "encoder_attention_mask": "attention_mask"}
    assert te.check["rel"] <= 1e-5
    for f in te.all_files():  # hashed like every bundle file
        assert sha256_file(root / f.path) == f.sha256
    graph = onnx.load(str(root / te.graph), load_external_data=False).graph

    def io(values):
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in values]

    assert io(graph.input) == [("input_ids", onnx.TensorProto.INT64, ["batch", 5]),
                               ("attention_mask", onnx.TensorProto.INT64, ["batch", 5])]
    assert io(graph.output) == [("prompt_embeds", onnx.TensorProto.FLOAT, ["batch", 5, 32])]
    # The tokenizer file pads and truncates to the bundle's caption length by itself, too.
    saved = json.loads((root / te.tokenizer.path).read_text())
    assert saved["padding"]["strategy"] == {"Fixed": 5} and saved["truncation"]["max_length"] == 5
    assert saved["model"]["type"] == "WordLevel" and saved["pre_tokenizer"]["type"] == "Whitespace"


def test_section_is_optional_and_its_files_are_hashed_only_when_present(exported):
    m = json.loads((exported[0] / "manifest.json").read_text())
    with_te = Manifest.from_dict(m)
    del m["text_encoder"]
    without = Manifest.from_dict(m)  # a bundle exported without --text-encoder
    assert without.text_encoder is None
    extra = {f.path for _, f in with_te.files()} - {f.path for _, f in without.files()}
    assert extra == {"text_encoder/model.onnx", "text_encoder/model.onnx.data", "text_encoder/tokenizer.json"}


@pytest.mark.parametrize("name", ["model.onnx.data", "tokenizer.json"])
def test_corrupted_text_encoder_file_is_refused_naming_it(bundle, name):
    path = bundle / "text_encoder" / name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DeltaDiTError, match=rf"text_encoder/{name.replace('.', '[.]')} \| sha256 does not match the "
                                            r"manifest \(segment text_encoder\)"):
        runtime.load(bundle)


def _edit(bundle, change):
    m = json.loads((bundle / "manifest.json").read_text())
    change(m["text_encoder"])
    return m


@pytest.mark.parametrize("change, match", [
    (lambda te: te["files"][1].update(path="onnx/head.onnx.data"),
     r"text_encoder\.files\[1\]\.path \| is 'onnx/head\.onnx\.data'\. Expected: text_encoder/model\.onnx\.data"),
    (lambda te: te["tokenizer"].update(path="../tokenizer.json"), r"text_encoder\.tokenizer\.path \| is '\.\./tokenizer"),
    (lambda te: te.update(max_length=6), r"text_encoder\.max_length \| is 6 but export\.text_len is 5"),
    (lambda te: te.update(pad_id=-1), r"text_encoder\.pad_id \| is -1\. Expected: an integer in \[0, "),
    (lambda te: te["inputs"][0].update(dtype="float32"), r"text_encoder\.inputs \| are \["),
    (lambda te: te["outputs"][0].update(shape=["batch", 5, 31]),
     r"text_encoder\.head_inputs\.encoder_hidden_states \| names prompt_embeds of shape \['batch', 5, 31\], but the "
     r"head takes \['batch', 5, 32\]"),
    (lambda te: te["head_inputs"].update(timestep="prompt_embeds"),
     r"text_encoder\.head_inputs\.timestep \| names prompt_embeds of shape"),
    (lambda te: te["head_inputs"].update(class_labels="input_ids"),
     r"text_encoder\.head_inputs\.class_labels \| is not an input of the head segment"),
])
def test_malformed_section_is_refused_naming_the_field(exported, change, match):
    m = _edit(exported[0], change)
    with pytest.raises(DeltaDiTError, match=match):
        Manifest.from_dict(m)


def test_text_encoder_graph_reading_foreign_external_data_is_refused(bundle):
    """The graph's weights must come from its own hashed file: a graph pointing at another bundle file is
    refused before a session opens it (the manifest cannot list a path outside text_encoder/)."""
    import onnx

    from deltadit.runtime.text_encoder import BundleTextConditioner

    path = bundle / "text_encoder" / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = "../onnx/head.onnx.data"
    onnx.save(model, str(path))
    m = json.loads((bundle / "manifest.json").read_text())
    m["text_encoder"]["files"][0]["sha256"] = sha256_file(path)
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DeltaDiTError, match=r"reads external data from '\.\./onnx/head\.onnx\.data', which is not one "
                                            r"of segment text_encoder's hashed files"):
        BundleTextConditioner(bundle, read_bundle(bundle).text_encoder)


def test_class_conditioned_model_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(DeltaDiTError, match=r"^--text-encoder \| model tiny-dit \(dit\) is conditioned by 'class', "
                                            r"which has no exportable text encoder .*Expected: leave out --text-encoder"):
        export_bundle(tiny_preset("dit"), PLAN, tmp_path / "b", random_init=True, progress=False, text_encoder=True)
    code = export_cli.main(["--model", "dit-xl", "--text-encoder", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --text-encoder | model dit-xl (dit) is conditioned")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_random_init_has_no_text_encoder_to_export(tmp_path):
    with pytest.raises(DeltaDiTError, match=r"--text-encoder \| a --random-init export has no text encoder"):
        export_bundle(tiny_preset("pixart"), PLAN, tmp_path / "b", random_init=True, progress=False, text_encoder=True)
    assert not (tmp_path / "b").exists()


def test_pipeline_folder_without_text_encoder_is_refused_before_any_work(tmp_path):
    folder = save_pipeline_folder(tmp_path / "pipe", build_pixart(), text=False)
    with pytest.raises(DeltaDiTError, match=r"--text-encoder \| tokenizer/, text_encoder/ not found \(looked in .*pipe\)\. "
                                            r"Expected: --weights DIR"):
        export_bundle(tiny_preset("pixart"), PLAN, tmp_path / "b", weights=str(folder), progress=False, text_encoder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


@pytest.mark.slow
def test_int8_bundle_keeps_its_text_encoder_fp32(tmp_path):
    """--int8 quantizes the block groups only: the text encoder graph has no Q/DQ and still equals PyTorch's T5."""
    import onnx

    from deltadit.export.quantize import Int8Options
    from deltadit.runtime.conditioning import TextConditioner
    from deltadit.runtime.text_encoder import BundleTextConditioner

    folder = save_pipeline_folder(tmp_path / "pipe", build_pixart())
    export_bundle(tiny_preset("pixart"), PLAN, tmp_path / "b", weights=str(folder), progress=False, build_engines=False,
                  text_encoder=True, int8=Int8Options(count=1, min_sqnr_db=0))
    m = read_bundle(tmp_path / "b")
    assert m.precision == "int8" and m.int8["quantized"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / m.text_encoder.graph), load_external_data=False).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "MatMulInteger"}
    got = BundleTextConditioner(tmp_path / "b", m.text_encoder).encode("a red cat")["encoder_hidden_states"]
    want = TextConditioner(folder, [], 5).encode("a red cat")["encoder_hidden_states"]
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5
