"""`deltadit serve` and `deltadit triton-repo` (registered by deltadit.cli through :func:`add_commands`)."""

from __future__ import annotations

import argparse

from deltadit import validate


def add_commands(sub) -> None:
    from deltadit.cli import flag

    port = flag(validate.integer, "port", 1, 65535, parse=int)
    s = sub.add_parser("serve", help="serve bundles on NVIDIA Triton (KServe v2 HTTP + gRPC), one model per bundle")
    s.add_argument("bundles", nargs="+", metavar="BUNDLE")
    s.add_argument("--host", default="127.0.0.1", help="address for HTTP, gRPC and metrics (default 127.0.0.1; "
                                                       "0.0.0.0 listens on every interface)")
    s.add_argument("--http-port", type=port, default=8000, help="default 8000")
    s.add_argument("--grpc-port", type=port, default=8001, help="default 8001")
    s.add_argument("--metrics-port", type=port, default=8002, help="default 8002")
    s.add_argument("--exit-timeout", type=flag(validate.integer, "--exit-timeout", 0, 3600, parse=int), default=30,
                   help="seconds in-flight requests get to finish after SIGTERM (default 30)")
    _repo_args(s)
    s.set_defaults(func=cmd_serve)
    r = sub.add_parser("triton-repo", help="write a Triton model repository (Python backend) for bundles")
    r.add_argument("bundles", nargs="+", metavar="BUNDLE")
    r.add_argument("out", metavar="DIR", help="repository folder to write (one model folder per bundle)")
    _repo_args(r)
    r.set_defaults(func=cmd_triton_repo)


def _repo_args(p: argparse.ArgumentParser) -> None:
    from deltadit.cli import flag

    integer = validate.integer
    p.add_argument("--max-batch", type=flag(integer, "--max-batch", 1, validate.MAX_BATCH, parse=int),
                   help="images per denoising loop (default: the bundle's max batch over its CFG batch)")
    p.add_argument("--queue", type=flag(integer, "--queue", 1, 100_000, parse=int), default=64,
                   help="requests that may wait per model; more are rejected at once (default 64)")
    p.add_argument("--batch-delay-us", type=flag(integer, "--batch-delay-us", 0, 10**7, parse=int), default=5000,
                   help="how long the dynamic batcher waits to fill a batch, in microseconds (default 5000)")
    p.add_argument("--instances", type=flag(integer, "--instances", 1, 64, parse=int), default=1,
                   help="model instances per bundle (default 1)")
    p.add_argument("--providers", default="", help="ONNX Runtime providers, comma-separated (default CPU)")
    p.add_argument("--backend", choices=validate.CPU_BACKENDS, default="onnxrt",
                   help="engine each model instance runs the bundle on (default onnxrt; auto: the faster CPU engine for "
                        "the bundle on the serving machine, measured at the first load and cached)")


def _options(args):
    from deltadit.serve.repo import RepoOptions

    return RepoOptions(args.max_batch, args.queue, args.batch_delay_us, args.instances, args.providers, args.backend)


def cmd_triton_repo(args) -> int:
    from deltadit.serve.repo import write_repo

    models = write_repo(args.bundles, validate.output_folder("DIR", args.out), _options(args))
    for name, folder in models.items():
        print(f"wrote {args.out}/{name} (bundle {folder})")
    return 0


def cmd_serve(args) -> int:
    from deltadit.serve.repo import write_repo
    from deltadit.serve.server import Addresses, run, triton_dist, workspace

    triton_dist()  # a missing [serve] extra fails before any bundle is read
    at = Addresses(args.host, args.http_port, args.grpc_port, args.metrics_port)
    with workspace() as folder:
        models = write_repo(args.bundles, folder / "models", _options(args))
        print("deltadit serve: models " + ", ".join(models), flush=True)
        return run(folder / "models", at, folder, exit_timeout=args.exit_timeout)
