"""A loopback HTTP proxy that forwards every request to a real server unchanged and keeps the
JSON bodies POSTed to it: what the server received, for tests that check the prompts sent."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RecordingProxy:
    """``base_url`` (``http://127.0.0.1:PORT/v1``) forwards to ``upstream`` (a server's root,
    ``http://127.0.0.1:PORT``); ``bodies(path)`` are the JSON bodies POSTed to ``path``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.received: list[tuple[str, dict]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if method == "POST" and body:
                    proxy.received.append((self.path, json.loads(body)))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                request = urllib.request.Request(proxy.upstream + self.path, data=body,
                                                 headers=headers, method=method)
                try:
                    with urllib.request.urlopen(request, timeout=600) as response:
                        status, data, kind = (response.status, response.read(),
                                              response.headers.get("Content-Type"))
                except urllib.error.HTTPError as err:
                    status, data, kind = err.code, err.read(), err.headers.get("Content-Type")
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._forward("GET")

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self._forward("POST")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def bodies(self, path: str) -> list[dict]:
        """The JSON bodies POSTed to ``path`` (e.g. ``/v1/chat/completions``), in order."""
        return [body for p, body in self.received if p == path]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
