"""One loaded bundle shared by a server's threads: concurrent generate calls return exactly the
single-threaded result, and the text encoder / decoder are loaded once."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from deltadit import runtime
from deltadit.runtime import conditioning

THREADS = 8
JOBS = [("a red cat", 0, True), ("a dog on the grass", 1, True), ("the giraffe", 2, False), ("a cat", 3, True),
        ("red grass", 4, False), ("a dog", 5, True), ("a red giraffe", 6, True), ("the cat on a dog", 7, False)]


@pytest.fixture
def exported(tiny_bundle, pixart_folder):
    return tiny_bundle("pixart", pipeline=True), pixart_folder  # the delta-dit plan on save_pipeline_folder's weights


def run(bundle, folder, job):
    prompt, seed, cache = job
    return runtime.generate(bundle, prompt=prompt, seed=seed, cache=cache, pipeline=folder)


def test_concurrent_generations_equal_single_threaded_bit_for_bit(exported, monkeypatch):
    path, folder = exported
    loads = []
    real_init = conditioning.TextConditioner.__init__
    monkeypatch.setattr(conditioning.TextConditioner, "__init__", lambda self, *a: loads.append(1) or real_init(self, *a))

    shared = runtime.load(path)  # fresh: the first calls race to create sessions and load the encoder
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda job: run(shared, folder, job), JOBS))
    assert len(loads) == 1, "the text encoder is loaded once per bundle, not per call"

    reference = runtime.load(path)
    for job, got in zip(JOBS, concurrent):
        want = run(reference, folder, job)
        assert torch.equal(got.latents, want.latents), job
        assert (got.image == want.image).all(), job
    # The shared bundle still serves single-threaded calls afterwards.
    assert torch.equal(run(shared, folder, JOBS[0]).latents, concurrent[0].latents)
