"""A stand-in server for ``ServerProcess`` tests: ``python -m tests.fake_server --port P
--marker F``. On its first run (no ``F`` yet) it logs uvicorn's port-taken error and hangs, as
SGLang's server does when its port was taken; later runs answer ``/health`` on ``P``."""

from __future__ import annotations

import argparse
import http.server
import time
from pathlib import Path


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--marker", type=Path, required=True)
    args = p.parse_args()
    if not args.marker.exists():
        args.marker.touch()
        print(f"ERROR:    [Errno 98] error while attempting to bind on address "
              f"('127.0.0.1', {args.port}): address already in use", flush=True)
        time.sleep(600)
        return
    http.server.HTTPServer((args.host, args.port), Health).serve_forever()


if __name__ == "__main__":
    main()
