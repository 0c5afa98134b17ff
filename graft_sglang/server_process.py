"""An SGLang server as a child process: started on a free loopback port, waited for, queried,
and always ended (the whole process group, by pid).

Used by the end-to-end tests, ``make demo`` and ``bench/serving``, so that every caller starts,
waits for and ends servers the same way: on a CPU through ``graft_sglang.cpu.launch_server``,
elsewhere through SGLang's own ``sglang.launch_server``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CPU_LAUNCHER = "graft_sglang.cpu.launch_server"
GPU_LAUNCHER = "sglang.launch_server"


PORT_TAKEN = b"error while attempting to bind on address"
PORT_RETRIES = 3


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


class ServerProcess:
    """``python -m <launcher> <args>`` on 127.0.0.1 (context manager).

    ``env``: variables added to this process's environment for the server (e.g.
    ``SGLANG_GRAFT_MODE``). The log goes to ``log_path`` (a temporary file by default); on a
    start-up failure ``ServerError`` carries its tail. ``stop()`` ends the process group with
    SIGTERM, then SIGKILL after ``grace`` seconds.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None,
                 log_path: Path | None = None, startup_timeout: float = 300.0,
                 grace: float = 10.0, launcher: str = CPU_LAUNCHER) -> None:
        self.launcher = launcher
        self.port = free_port()
        self.args = [*args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="sglang-cpu-", suffix=".log")[1])
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.process: subprocess.Popen[bytes] | None = None
        self._deadline = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> ServerProcess:
        """Start the process (not waiting for it: several servers may start side by side)."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.launcher, *self.args], stdout=log,
                stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self._deadline = time.monotonic() + self.startup_timeout
        return self

    def _port_taken(self) -> bool:
        """Whether the HTTP server found its port taken (by another process that bound it
        between ``free_port`` and the server's bind, e.g. a neighbour server's own ports)."""
        try:
            with open(self.log_path, "rb") as log:
                return PORT_TAKEN in log.read()
        except OSError:
            return False

    def wait_ready(self) -> ServerProcess:
        """Wait until ``/health`` answers 200; a server whose port was taken meanwhile is
        restarted on a new one (up to ``PORT_RETRIES`` times, each with a fresh start-up
        timeout). Raises ``ServerError`` (and ends the server) if it exits or the start-up
        timeout passes."""
        assert self.process is not None, "spawn() first"
        retries = PORT_RETRIES
        while time.monotonic() < self._deadline:
            if retries and self._port_taken():
                retries -= 1
                self.stop()
                self.port = free_port()
                self.args[self.args.index("--port") + 1] = str(self.port)
                self.spawn()
                continue
            if self.process.poll() is not None:
                raise ServerError(f"the server exited with code {self.process.returncode}"
                                  f"\n{self.log_tail()}")
            try:
                if self.get("/health")[0] == 200:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerError(f"the server was not ready after {self.startup_timeout:.0f} s"
                          f"\n{self.log_tail()}")

    def start(self) -> ServerProcess:
        return self.spawn().wait_ready()

    def stop(self) -> None:
        """End the server's whole process group (scheduler and detokenizer included)."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, self.grace), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- HTTP ---------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body.strip() else None

    def post(self, path: str, payload: Any, timeout: float = 600.0) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read()
            return json.loads(body) if body.strip() else None

    def generate(self, payload: Mapping[str, Any], timeout: float = 600.0) -> Any:
        """SGLang's native ``/generate`` (``text`` or ``input_ids``, ``sampling_params``)."""
        return self.post("/generate", dict(payload), timeout=timeout)

    def server_info(self) -> dict[str, Any]:
        return self.get("/server_info")[1]

    def internal_states(self) -> list[dict[str, Any]]:
        """One dict per scheduler (``/server_info``'s ``internal_states``)."""
        return list(self.server_info().get("internal_states") or [])
