"""A real Triton on 127.0.0.1: `deltadit serve` and the stock tritonserver on a `deltadit triton-repo` repository.

Served images equal runtime.generate for the same seed; requests batched by Triton equal the same
requests one by one; bad requests get their own error while the rest are served; overload is rejected
by the bounded queue; SIGTERM lets in-flight requests finish.
"""

import subprocess
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pytriton")
http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from deltadit import cli, runtime  # noqa: E402
from deltadit.serve.process import ServeProcess, free_ports  # noqa: E402
from tests.serve.conftest import wait_gone  # noqa: E402

pytestmark = pytest.mark.slow
PROMPTS = ("a cat", "a dog", "a zebra", "a bird", "a horse", "a cow")


@pytest.fixture(scope="module")
def bundle(animals_bundle):
    return runtime.load(animals_bundle)


@pytest.fixture(scope="module")
def served(animals_bundle, tmp_path_factory):
    server = ServeProcess(animals_bundle, tmp_path_factory.mktemp("log") / "serve.log", "--max-batch", "4", "--queue", "4",
                    "--batch-delay-us", "200000").wait_ready()
    yield server
    assert server.stop() == 0
    assert wait_gone(server.workspaces), "the workspace was left behind"


def inputs(module, prompt, seed, extra=None):
    """Triton inputs of one request (batch axis 1); extra: name -> (numpy array, Triton dtype), replacing or
    adding to prompt and seed."""
    arrays = {"prompt": (np.array([[prompt.encode()]], dtype=object), "BYTES"),
              "seed": (np.array([[seed]], dtype=np.int64), "INT64"), **(extra or {})}
    out = []
    for name, (array, dtype) in arrays.items():
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def client(server, protocol=http):
    """A client that closes its connection on exit: Triton's SIGTERM drain waits for open HTTP connections."""
    return protocol.InferenceServerClient(server.at.http if protocol is http else server.at.grpc)


def infer(server, prompt, seed, protocol=http):
    with client(server, protocol) as c:
        result = c.infer(server.model, inputs(protocol, prompt, seed))
    return result.as_numpy("image")[0], result.as_numpy("latents")[0]


def concurrently(calls):
    """Run the calls at once (one thread each); returns each call's result or exception."""
    results = [None] * len(calls)

    def go(k):
        try:
            results[k] = calls[k]()
        except Exception as e:  # noqa: BLE001
            results[k] = e

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_health_and_served_image_equals_generate(served, bundle):
    with client(served) as c:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(served.model)
    want = runtime.generate(bundle, prompt="a giraffe", seed=123)
    for protocol in (http, grpc):
        image, latents = infer(served, "a giraffe", 123, protocol)
        assert image.dtype == np.uint8 and image.shape == want.pixels().shape
        np.testing.assert_array_equal(image, want.pixels())
        np.testing.assert_array_equal(latents, want.latents[0].numpy())


def test_concurrent_requests_are_batched_and_equal_one_by_one(served, bundle):
    with client(served) as c:
        before = c.get_inference_statistics(served.model)["model_stats"][0]
        got = concurrently([lambda p=p, s=s: infer(served, p, s) for s, p in enumerate(PROMPTS[:4])])
        after = c.get_inference_statistics(served.model)["model_stats"][0]
    images = after["inference_count"] - before["inference_count"]
    loops = after["execution_count"] - before["execution_count"]
    assert images == 4 and loops < images, (images, loops)  # Triton batched some of them into one loop
    for (s, p), (image, latents) in zip(enumerate(PROMPTS[:4]), got):
        alone = runtime.generate(bundle, prompt=p, seed=s)
        np.testing.assert_array_equal(image, alone.pixels())
        np.testing.assert_array_equal(latents, alone.latents[0].numpy())


BAD = {  # case -> (inputs, what the error names)
    "missing prompt": (lambda: inputs(http, "a cat", 1)[1:], "missing required input(s) ['prompt']"),
    "oversized prompt": (lambda: inputs(http, "a cat " * 10_000, 1), "prompt | 60000 bytes"),
    "wrong dtype": (lambda: inputs(http, "a cat", 1, {"seed": (np.array([[1.5]], np.float32), "FP32")}),
                    "expects 'INT64'"),
    "seed out of range": (lambda: inputs(http, "a cat", -1), "seed | -1 is out of range"),
    "non-finite guidance": (lambda: inputs(http, "a cat", 1, {"guidance": (np.array([[np.inf]], np.float32), "FP32")}),
                            "guidance | inf is out of range"),
}


def test_bad_requests_get_their_own_error_and_the_rest_are_served(served, bundle):
    def send(make):
        with client(served) as c:
            return c.infer(served.model, make())

    calls = [lambda make=make: send(make) for make, _ in BAD.values()] + [lambda: infer(served, "a sheep", 9)]
    *errors, good = concurrently(calls)  # the good request may share a batch with the bad ones
    for (case, (_, names)), error in zip(BAD.items(), errors):
        assert isinstance(error, InferenceServerException) and names in error.message(), (case, error)
        assert error.status() == "400", (case, error.status())  # the client's fault, not the server's
    with client(served) as c:
        with pytest.raises(InferenceServerException, match="unknown model"):
            c.infer("no-such-model", inputs(http, "a cat", 1))
        assert c.is_server_ready() and c.is_model_ready(served.model)
    np.testing.assert_array_equal(good[0], runtime.generate(bundle, prompt="a sheep", seed=9).pixels())


def test_overload_is_rejected_by_the_bounded_queue(served, bundle):
    calls = [lambda s=s: infer(served, "a cow", s, grpc) for s in range(24)]
    results = concurrently(calls)
    rejected = [r for r in results if isinstance(r, Exception)]
    served_ok = {s: r for s, r in enumerate(results) if not isinstance(r, Exception)}
    assert rejected and served_ok, f"{len(rejected)} rejected, {len(served_ok)} served"
    assert all("queue" in str(e) for e in rejected), rejected[0]
    for s, (image, _) in list(served_ok.items())[:3]:
        np.testing.assert_array_equal(image, runtime.generate(bundle, prompt="a cow", seed=s).pixels())


def test_sigterm_finishes_requests_in_flight(animals_bundle, tmp_path):
    server = ServeProcess(animals_bundle, tmp_path / "serve.log", "--max-batch", "2", "--queue", "64").wait_ready()
    try:
        done, first = {}, threading.Event()

        def call(s):
            result = infer(server, "a bear", s, grpc)
            done[s] = time.monotonic()
            first.set()
            return result

        # 32 requests in batches of 2; SIGTERM as soon as the first is answered (a fixed sleep let a fast
        # machine answer all of 8 before it), so the rest are queued or running when it arrives.
        results = [None]
        thread = threading.Thread(target=lambda: results.__setitem__(0, concurrently([lambda s=s: call(s) for s in range(32)])))
        thread.start()
        assert first.wait(120), "no request was answered"
        stopped_at = time.monotonic()
        code = server.stop()
        thread.join()
    finally:
        server.stop()
    assert not [r for r in results[0] if isinstance(r, Exception)], results[0]
    assert max(done.values()) > stopped_at, "every request finished before SIGTERM: nothing was in flight"
    assert code == 0
    assert wait_gone(server.workspaces)


def test_stock_tritonserver_on_the_written_repository(animals_bundle, bundle, tmp_path):
    from deltadit.serve import server as triton

    assert cli.main(["triton-repo", str(animals_bundle), str(tmp_path / "repo")]) == 0
    at = triton.Addresses("127.0.0.1", *free_ports(3))
    with triton.workspace() as folder, open(tmp_path / "triton.log", "w") as log:
        process = subprocess.Popen(triton.command(tmp_path / "repo", triton.backends(folder), at),
                                   env=triton.environment(), stdout=log, stderr=subprocess.STDOUT)
        try:
            triton.wait_ready(process, at, 600)
            with http.InferenceServerClient(at.http) as c:
                result = c.infer("animals-s4", inputs(http, "an elephant", 77))
        finally:
            process.terminate()
            process.wait(120)
    want = runtime.generate(bundle, prompt="an elephant", seed=77)
    np.testing.assert_array_equal(result.as_numpy("image")[0], want.pixels())
