"""A small bundle of the embedded animals model: 4 steps, up to 4 images per denoising loop."""

import time

import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def animals_bundle(tmp_path_factory):
    from deltadit.export.pipeline import export_bundle
    from deltadit.presets import load_preset

    preset = load_preset("animals").with_overrides(steps=4, b=4, interval=2)
    out = tmp_path_factory.mktemp("serve") / "animals-s4"
    export_bundle(preset, preset.plan(), out, max_batch=8, progress=False)  # CFG batch 2: 4 images per loop
    return out


def wait_gone(still_there, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while still_there() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not still_there()
