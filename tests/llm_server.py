"""A local LLM server for tests: OpenAI Chat Completions and Responses, Anthropic Messages.

Replies are scripted (`script(...)`, first in first out; `default` when the script is empty)
and every request's raw body is recorded, so tests can assert what reached the wire. Standard
library only: the current openai / anthropic SDKs use httpx2, which in-process mocks do not
intercept, so the tests talk real HTTP on loopback.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: a fix (valid structured output), an HTTP error, a stall, or garbage."""

    kind: str  # fix | status | stall | text | raw
    fix: dict[str, Any] | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    text: str = ""


#: The code the default suggestion is about (a project's app/calc.py), and a patch that fixes it
#: (search/replace blocks, as the analyzer asks for).
CALC_SOURCE = "def ratio(values):\n    total = sum(values)\n    return total / len(values)\n"
CALC_FIX_PATCH = """app/calc.py
<<<<<<< SEARCH
    return total / len(values)
=======
    return total / len(values) if values else 0.0
>>>>>>> REPLACE
"""


def fix_reply(**fields: Any) -> Reply:
    return Reply("fix", fix=suggestion(**fields))


def suggestion(**fields: Any) -> dict[str, Any]:
    base = {
        "root_cause": "the divisor can be zero",
        "explanation": "ratio() divides by a count that is zero for an empty list",
        "suspect_file": "app/calc.py",
        "suspect_line": 3,
        "fix_description": "return 0.0 for an empty list",
        "patch": "",
        "affected_files": [],
        "confidence": 0.9,
        "risk": "low",
    }
    base.update(fields)
    return base


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class LLMServer:
    """The server; `openai_base_url` includes /v1, `anthropic_base_url` does not (as the SDKs expect)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.default: Reply = fix_reply()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with server._lock:
                    server.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    reply = server.replies.popleft() if server.replies else server.default
                server.answer(self, reply, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="llm-test-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def start(self) -> LLMServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.replies.clear()
            self.received.clear()
            self.default = fix_reply()

    def wire(self) -> bytes:
        """Every request body received so far, concatenated."""
        with self._lock:
            return b"\n".join(r.body for r in self.received)

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    # -- answers in each API's shape ---------------------------------------------------------
    def answer(self, handler: BaseHTTPRequestHandler, reply: Reply, body: bytes) -> None:
        path = handler.path
        anthropic = path.startswith("/v1/messages")
        if reply.kind == "stall":
            time.sleep(reply.seconds)  # the client has given up by now
        if reply.kind == "status":
            if anthropic:
                payload: Any = {
                    "type": "error",
                    "error": {"type": "api_error", "message": f"scripted {reply.status}"},
                }
            else:
                payload = {
                    "error": {"message": f"scripted {reply.status}", "type": "server_error", "code": None}
                }
            self._send(handler, reply.status, json.dumps(payload).encode(), reply.headers)
            return
        if reply.kind == "raw":
            self._send(handler, reply.status, reply.text.encode(), {"Content-Type": "text/html"})
            return
        content = reply.text if reply.kind == "text" else json.dumps(reply.fix or suggestion())
        tokens_in, tokens_out = max(1, len(body) // 4), max(1, len(content) // 4)
        model = "unknown"
        with contextlib.suppress(ValueError):
            model = json.loads(body).get("model", model)
        if path.startswith("/v1/chat/completions"):
            payload = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": tokens_in,
                    "completion_tokens": tokens_out,
                    "total_tokens": tokens_in + tokens_out,
                },
            }
        elif path.startswith("/v1/responses"):
            payload = {
                "id": "resp_test",
                "object": "response",
                "created_at": int(time.time()),
                "status": "completed",
                "model": model,
                "output": [
                    {
                        "type": "message",
                        "id": "msg_test",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": content, "annotations": []}],
                    }
                ],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": {
                    "input_tokens": tokens_in,
                    "output_tokens": tokens_out,
                    "total_tokens": tokens_in + tokens_out,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0},
                },
            }
        elif anthropic:
            if reply.kind == "text":
                block: dict[str, Any] = {"type": "text", "text": content}
            else:
                block = {"type": "tool_use", "id": "toolu_test", "name": "report_fix", "input": reply.fix}
            payload = {
                "id": "msg_test",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [block],
                "stop_reason": "tool_use" if reply.kind != "text" else "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
            }
        else:
            self._send(handler, 404, b'{"error": {"message": "no such endpoint"}}', {})
            return
        self._send(handler, 200, json.dumps(payload).encode(), {})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str]) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", headers.get("Content-Type", "application/json"))
            handler.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                if name != "Content-Type":
                    handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up (a scripted stall)
            pass
