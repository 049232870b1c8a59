"""`deltadit serve` as a child process on free local ports (used by the tests and benchmarks/serve_load.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from deltadit.serve.server import Addresses, wait_ready


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class ServeProcess:
    """``deltadit serve BUNDLE FLAGS`` on 127.0.0.1 (free HTTP / gRPC / metrics ports), its output in ``log``."""

    def __init__(self, bundle: str | Path, log: str | Path, *flags: str):
        self.at = Addresses("127.0.0.1", *free_ports(3))
        self.model = Path(bundle).resolve().name
        self.log = Path(log)
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deltadit.cli", "serve", str(bundle), "--http-port", str(self.at.http_port),
                 "--grpc-port", str(self.at.grpc_port), "--metrics-port", str(self.at.metrics_port), *flags],
                stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 600) -> ServeProcess:
        """Return self once Triton is ready; on failure stop it and raise with the log's tail."""
        try:
            wait_ready(self.process, self.at, timeout)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{e}\n{self.log.read_text()[-4000:]}") from None
        return self

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM (in-flight requests finish), wait; SIGKILL after ``timeout`` s. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def workspaces(self) -> list[str]:
        """This server's workspace folders still on disk."""
        return [f for f in os.listdir(tempfile.gettempdir()) if f.startswith(f"deltadit-serve-{self.process.pid}-")]
