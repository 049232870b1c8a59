"""A bundle is a closed, verified unit: nothing outside it is read, every file is hashed and owned by its
segment, and a malformed manifest fails with one error naming the field (issue: safe on a user's disk)."""

import copy
import json
import os
import shutil

import pytest

pytest.importorskip("onnxruntime")

from deltadit import cli, runtime
from deltadit.bundle import read_bundle
from deltadit.errors import DeltaDiTError


@pytest.fixture
def pristine(tiny_bundle):
    return tiny_bundle("pixart")  # the delta-dit plan; shared with other modules, never changed in place


@pytest.fixture
def bundle(pristine, tmp_path):
    """A private copy to tamper with."""
    return shutil.copytree(pristine, tmp_path / "b")


def edit(bundle, change):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def seg(m, name):
    return next(s for s in m["segments"] if s["name"] == name)


def test_pristine_bundle_loads(bundle):
    m = read_bundle(bundle)
    assert [s.name for s in m.segments][0] == "head" and m.segment("blocks_00_03").ort_graph == "onnx/blocks_00_03.ort.onnx"
    assert (m.segment("blocks_00_03").fused_attention, m.segment("blocks_00_03").fused_gelu) == (3, 3)


def test_fused_gelu_count_is_optional_and_checked(bundle):
    edit(bundle, lambda m: seg(m, "blocks_00_03")["ort_graph"].pop("fused_gelu"))  # a bundle from before GELU fusion
    assert read_bundle(bundle).segment("blocks_00_03").fused_gelu == 0
    edit(bundle, lambda m: seg(m, "blocks_00_03")["ort_graph"].update(fused_gelu="3"))
    with pytest.raises(DeltaDiTError, match=r"ort_graph\.fused_gelu \| is a string"):
        runtime.load(bundle)


@pytest.mark.parametrize("path", ["/etc/shadow", "../outside.onnx", "onnx/../../x", "./onnx/head.onnx"])
def test_paths_outside_or_unnormalised_are_refused_before_any_file_is_opened(bundle, path, monkeypatch):
    opened = []
    monkeypatch.setattr("deltadit.bundle.sha256_file", lambda p, *a: opened.append(p) or "0" * 64)
    edit(bundle, lambda m: seg(m, "head")["files"].append({"path": path, "sha256": "0" * 64}))
    with pytest.raises(DeltaDiTError, match=r"segments\[0\]\.files\[\d\]\.path \| is .*Expected: a relative path inside"):
        runtime.load(bundle)
    assert opened == []  # no oracle: the entry is refused on its form, not after hashing it


def test_symlinked_file_and_folder_pointing_outside_are_refused(bundle, tmp_path):
    data = bundle / "onnx" / "blocks_00_03.onnx.data"
    outside = tmp_path / "outside.data"
    shutil.move(data, outside)
    os.symlink(outside, data)  # same bytes, so the hash would match: refused for being a link
    with pytest.raises(DeltaDiTError, match=r"blocks_00_03\.onnx\.data \| is a symbolic link"):
        runtime.load(bundle)
    data.unlink()
    shutil.move(outside, data)
    runtime.load(bundle)  # restored: fine
    folder = tmp_path / "elsewhere"
    shutil.move(bundle / "onnx", folder)
    os.symlink(folder, bundle / "onnx")
    with pytest.raises(DeltaDiTError, match=r"onnx \| is a symbolic link"):
        runtime.load(bundle)


def test_fused_graph_must_be_one_of_the_segments_hashed_files(bundle):
    # Point the fused graph of one group at another group's (hashed, but not this segment's) graph.
    edit(bundle, lambda m: seg(m, "blocks_00_03")["ort_graph"].update(path="onnx/blocks_03_06.ort.onnx"))
    with pytest.raises(DeltaDiTError, match=r"ort_graph\.path \| is 'onnx/blocks_03_06\.ort\.onnx', which is not among"):
        runtime.load(bundle)


def test_files_cannot_be_swapped_between_segments(bundle):
    def swap(m):
        a, b = seg(m, "blocks_00_03"), seg(m, "blocks_03_06")
        a["files"], b["files"] = b["files"], a["files"]
    edit(bundle, swap)
    with pytest.raises(DeltaDiTError, match=r"which is not a file of segment blocks_00_03"):
        runtime.load(bundle)


def test_swapped_file_contents_fail_the_hash_check(bundle):
    a, b = bundle / "onnx" / "blocks_00_03.onnx", bundle / "onnx" / "blocks_03_06.onnx"
    tmp = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(tmp)
    with pytest.raises(DeltaDiTError, match=r"sha256 does not match the manifest"):
        runtime.load(bundle)


def test_external_data_must_be_the_segments_own_file(bundle, tmp_path):
    """A graph whose external-data location points elsewhere is refused even with consistent hashes."""
    import onnx

    from deltadit.bundle import sha256_file

    path = bundle / "onnx" / "blocks_00_03.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensors = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert tensors, "the exporter stores group weights as external data"
    for t in tensors:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = "../../../etc/passwd"
    onnx.save(model, str(path))
    edit(bundle, lambda m: seg(m, "blocks_00_03")["files"][0].update(sha256=sha256_file(path)))
    with pytest.raises(DeltaDiTError, match=r"reads external data from '\.\./\.\./\.\./etc/passwd'"):
        runtime.load(bundle)


@pytest.mark.parametrize("change, field", [
    (lambda m: m.pop("segments"), r"segments \| is missing"),
    (lambda m: m["model"].update(random_init="yes"), r"model\.random_init \| is a string"),
    (lambda m: m["segments"][1].update(block_range=[3]), r"segments\[1\]\.block_range \| is \[3\]"),
    (lambda m: m["segments"][0]["inputs"][0].update(shape=["batch", -4]), r"inputs\[0\]\.shape\[1\] \| is -4"),
    (lambda m: m["segments"].pop(0), r"segments \| are \['group'"),
    (lambda m: m.update(plan=[]), r"plan \| is a list"),
    (lambda m: m["plan"].pop("steps"), r"plan"),
    (lambda m: m["export"].update(text_len=10**8), r"export\.text_len \| is 100000000"),
    (lambda m: m["plan"].update(num_steps=10**9), r"plan\.num_steps \| is 1000000000"),
    (lambda m: m["sampling"]["scheduler_config"].update(num_train_timesteps=10**9),
     r"scheduler_config\.num_train_timesteps \| is 1000000000"),
    (lambda m: m["sampling"].update(scheduler="magic"), r"sampling\.scheduler \| is 'magic'"),
    (lambda m: m["sampling"].update(guidance_scale=float("nan")), r"sampling\.guidance_scale"),
    (lambda m: m["model"]["config"].update(in_channels=10**7), r"model\.config\.in_channels \| is 10000000"),
    (lambda m: m["segments"][2].update(name="../../x"), r"segments\[2\]\.name \| is '\.\./\.\./x'"),
    (lambda m: m.update(engines={"built": True, "files": {"head": {"path": "engines/../../x.engine", "sha256": "0" * 64}}}),
     r"engines\.files\.head\.path"),
])
def test_malformed_manifest_names_the_field(bundle, change, field):
    edit(bundle, change)
    with pytest.raises(DeltaDiTError, match=field):
        runtime.load(bundle)


def test_real_weights_bundle_must_carry_its_weights_fingerprint(bundle):
    edit(bundle, lambda m: m["model"].update(random_init=False, source="/somewhere", weights_sha256=None))
    with pytest.raises(DeltaDiTError, match=r"model\.weights_sha256 \| is missing for a bundle of real weights"):
        runtime.load(bundle)


def test_cli_check_fails_cleanly_on_a_tampered_bundle(bundle, capsys):
    edit(bundle, lambda m: seg(m, "blocks_00_03")["ort_graph"].update(path="onnx/tail.onnx"))
    assert cli.main(["check", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "files and hashes OK" not in err and "Traceback" not in err


def test_bad_scheduler_config_never_writes_an_image(bundle, pixart_folder, tmp_path, capsys):
    """beta = 1 makes every alpha 0: the schedule divides by zero. No PNG from such latents."""
    folder = pixart_folder
    edit(bundle, lambda m: m["sampling"]["scheduler_config"].update(beta_start=1.0, beta_end=1.0))
    out = tmp_path / "x.png"
    assert cli.main(["generate", str(bundle), "--prompt", "a cat", "--pipeline", str(folder), "--out", str(out)]) == 2
    assert "not finite" in capsys.readouterr().err or "rejects it" in capsys.readouterr().err
    assert not out.exists()


def test_a_format_1_bundle_is_refused_with_a_reexport_hint(bundle):
    edit(bundle, lambda m: m.update(format_version=1))
    with pytest.raises(DeltaDiTError, match=r"format version 1 is not supported by this deltadit \(reads version 2\)\. "
                                            r"Expected: re-export it with this deltadit"):
        runtime.load(bundle)


def test_a_driver_section_that_disagrees_with_the_spec_is_refused(bundle):
    edit(bundle, lambda m: m["driver"].update(cfg_order="cond_first"))
    with pytest.raises(DeltaDiTError, match=r"manifest field driver \| is .*what this deltadit's pixart spec says"):
        runtime.load(bundle)


def test_manifest_round_trip_is_lossless(pristine):
    """What the exporter writes is exactly what the typed reader accepts (no field silently dropped)."""
    from deltadit.manifest import Manifest

    raw = json.loads((pristine / "manifest.json").read_text())
    m = Manifest.from_dict(copy.deepcopy(raw))
    assert m.plan.to_dict() == raw["plan"] and len(m.segments) == len(raw["segments"])
    assert {f.path for _, f in m.files()} == {f["path"] for s in raw["segments"] for f in s["files"]}
