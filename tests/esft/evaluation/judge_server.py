"""A real OpenAI-compatible HTTP server that plays a judge: its reply depends on the graded answer.

Answers starting with a behaviour word get that behaviour: ``slow`` (sleeps past any client timeout),
``refuse`` (HTTP 503), ``garbage`` (not JSON), ``ramble`` (a reply without a score), ``eleven``
(``Score: 11``); any other answer ``N ...`` gets ``Score: N``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _JudgeHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": request, "auth": self.headers.get("Authorization")})
        prompt = request["messages"][-1]["content"]
        answer = re.search(r"ANSWER:\n(.*)\n\nReply with", prompt, re.S).group(1).strip()
        word = answer.split()[0] if answer else ""
        if word == "slow":
            time.sleep(1.5)
        if word == "refuse":
            return self._send(503, b'{"error": {"message": "overloaded"}}')
        if word == "garbage":
            return self._send(200, b"<html>not json</html>", "text/html")
        content = {"ramble": "The answer seems fine overall.", "eleven": "Score: 11"}.get(word, f"Score: {word}")
        message = {"role": "assistant", "content": content}
        reply = {"id": "x", "object": "chat.completion", "model": request["model"],
                 "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
        self._send(200, json.dumps(reply).encode())


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that timed out and left
        pass


@contextmanager
def judge_server() -> Iterator[ThreadingHTTPServer]:
    """Serve on a free local port; ``server.url`` is the API base, ``server.requests`` what it received."""
    server = _QuietServer(("127.0.0.1", 0), _JudgeHandler)
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
