"""``ServerProcess``: a server whose port was taken while it started is restarted on another."""

from __future__ import annotations

from pathlib import Path

from graft_sglang.server_process import ServerProcess


def test_a_taken_port_restarts_the_server_on_a_new_one(tmp_path: Path) -> None:
    server = ServerProcess(["--marker", str(tmp_path / "started")], launcher="tests.fake_server",
                           startup_timeout=30, grace=2)
    first = server.port
    try:
        server.start()
        assert server.port != first
        assert server.get("/health")[0] == 200
    finally:
        server.stop()
    assert server.process is not None and server.process.poll() is not None
