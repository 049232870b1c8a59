"""Run NVIDIA's ``tritonserver`` (the binary the ``nvidia-pytriton`` wheel ships) on a model repository.

What this module handles so the user does not have to (each seen on these machines):

- The python-backend stub links ``libpython3.X.so`` from the system library path; next to another build of
  the same Python it loads the wrong one and model load fails with ``'_thread.RLock' object has no
  attribute '_recursion_count'``. :func:`environment` puts the running interpreter's library folder first
  on ``LD_LIBRARY_PATH`` and its ``bin`` first on ``PATH`` (the stub finds the virtual environment, and
  so ``deltadit``, through the ``python3`` on PATH).
- Triton binds 0.0.0.0 unless every address is given: :func:`command` always passes HTTP, gRPC and
  metrics addresses (default 127.0.0.1).
- The stub and backend are assembled in a workspace folder that is removed on exit; folders that a
  killed server left behind are removed at the next start (:func:`workspace`).
- SIGTERM / SIGINT to ``deltadit serve`` are passed to Triton, which stops taking requests, finishes
  those in flight (up to ``exit_timeout`` seconds) and exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deltadit.errors import DeltaDiTError

WORKSPACE_PREFIX = "deltadit-serve-"
INSTALL = "Expected: pip install 'deltadit[serve]' (nvidia-pytriton ships the tritonserver binary)."


@dataclass(frozen=True)
class Addresses:
    """Where Triton listens: one host for HTTP, gRPC and metrics (KServe v2 endpoints)."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def triton_dist() -> Path:
    """The tritonserver distribution inside the installed nvidia-pytriton wheel."""
    try:
        from pytriton.utils.distribution import get_root_module_path
    except ImportError:
        raise DeltaDiTError(f"serve | nvidia-pytriton is not installed. {INSTALL}") from None
    dist = get_root_module_path() / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise DeltaDiTError(f"serve | {dist}/bin/tritonserver is missing. {INSTALL}")
    return dist


def environment() -> dict[str, str]:
    """This process's environment with the libpython and pytriton library folders first on
    LD_LIBRARY_PATH and this interpreter's bin folder first on PATH."""
    from pytriton.utils.distribution import get_libs_path

    env = dict(os.environ)
    libdirs = [sysconfig.get_config_var("LIBDIR"), str(get_libs_path()), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


@contextmanager
def workspace():
    """A new workspace folder (named by this process id), removed on exit; first removes the folders
    of processes that are gone (a server killed with SIGKILL cannot clean up after itself)."""
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{WORKSPACE_PREFIX}*"):
        pid = old.name[len(WORKSPACE_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def backends(folder: Path) -> Path:
    """A Triton backend folder with the python backend and the stub built for this Python version."""
    dist = triton_dist()
    python = folder / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for f in (dist / "backends" / "python").iterdir():
        if f.is_file():
            os.symlink(f, python / f.name)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise DeltaDiTError(f"serve | nvidia-pytriton has no python-backend stub for Python {version}. "
                            "Expected: Python 3.8 to 3.13.")
    os.symlink(stub, python / stub.name)
    return folder / "backends"


def command(repo: Path, backend_dir: Path, at: Addresses, exit_timeout: int = 30) -> list[str]:
    """The tritonserver command line: every address set, the stub's backend folder, strict readiness."""
    return [str(triton_dist() / "bin" / "tritonserver"), f"--model-repository={repo}",
            f"--backend-directory={backend_dir}", f"--http-address={at.host}", f"--http-port={at.http_port}",
            f"--grpc-address={at.host}", f"--grpc-port={at.grpc_port}", f"--metrics-address={at.host}",
            f"--metrics-port={at.metrics_port}", "--allow-gpu-metrics=false", "--strict-readiness=true",
            "--exit-on-error=true", f"--exit-timeout-secs={exit_timeout}", "--log-verbose=0"]


def ready(at: Addresses, timeout: float = 1.0) -> bool:
    """Triton's readiness endpoint (GET /v2/health/ready) answers 200."""
    try:
        with urllib.request.urlopen(f"http://{at.http}/v2/health/ready", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def wait_ready(process: subprocess.Popen, at: Addresses, timeout: float) -> None:
    """Return once Triton is ready; raise DeltaDiTError if it exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not ready(at):
        if process.poll() is not None:
            raise DeltaDiTError(f"serve | tritonserver exited with code {process.returncode} before it was ready "
                                "(its log above names the cause). Expected: free ports and loadable bundles.")
        if time.monotonic() > deadline:
            raise DeltaDiTError(f"serve | tritonserver was not ready after {timeout:.0f} s. Expected: a longer "
                                "--ready-timeout for large bundles.")
        time.sleep(0.2)


def run(repo: Path, at: Addresses, folder: Path, *, exit_timeout: int = 30, ready_timeout: float = 300.0) -> int:
    """Serve ``repo`` (backend files go to the workspace ``folder``) until SIGTERM / SIGINT, which are
    passed on to Triton (it drains in-flight requests); returns Triton's exit code."""
    process = None
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        process = subprocess.Popen(command(repo, backends(folder), at, exit_timeout), env=environment())
        for s in previous:
            signal.signal(s, lambda *_: process.send_signal(signal.SIGTERM))
        wait_ready(process, at, ready_timeout)
        print(f"deltadit serve: ready, HTTP {at.http}, gRPC {at.grpc}, metrics {at.host}:{at.metrics_port}", flush=True)
        return process.wait()
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
