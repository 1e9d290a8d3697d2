"""A scripted judge: an OpenAI-compatible chat server (its own process, stdlib HTTP) that answers the judge
prompt of `gateway.scoring.judge` the way a judge model would, by a rule the tests know.

`--rule quality` (default): an answer containing "WRONG" loses to one that does not; otherwise, when one of
them has the sign-off "Best regards", it wins; else a tie. `--rule first`: always "A" (a judge with pure
position bias). `--rule garbage`: a reply with no verdict. Every call is counted (`GET /stats`), each answer
reports usage (prompt tokens = words of the prompt, completion tokens = words of the reply) so pricing can be
checked, and the key it demands (`--api-key`) is checked on every call."""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECTION = re.compile(r"# Answer A\n\n(?P<a>.*?)\n\n# Answer B\n\n(?P<b>.*?)\n\n# Your verdict", re.S)


def decide(prompt: str, rule: str) -> str:
    if rule == "garbage":
        return "I think they are both fine, really."
    if rule == "first":
        return json.dumps({"rationale": "the first one reads well", "verdict": "A"})
    found = SECTION.search(prompt)
    if found is None:
        return json.dumps({"rationale": "no answers found", "verdict": "tie"})
    a, b = found.group("a"), found.group("b")

    def quality(text: str) -> int:
        return -2 if "WRONG" in text else (1 if "Best regards" in text else 0)

    qa, qb = quality(a), quality(b)
    verdict = "tie" if qa == qb else ("A" if qa > qb else "B")
    return json.dumps({"rationale": f"A scores {qa}, B scores {qb}", "verdict": verdict})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rule", choices=("quality", "first", "garbage"), default="quality")
    parser.add_argument("--api-key", default="judge-key")
    args = parser.parse_args()
    calls: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            return None

        def _send(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"ok": True})
            elif self.path == "/stats":
                with lock:
                    self._send(200, {"calls": len(calls), "models": sorted({c["model"] for c in calls})})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            if self.headers.get("authorization") != f"Bearer {args.api_key}":
                self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                return
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found"}})
                return
            prompt = body["messages"][-1]["content"]
            reply = decide(prompt, args.rule)
            with lock:
                calls.append({"model": body.get("model")})
            self._send(200, {"id": f"judge-{len(calls)}", "object": "chat.completion", "model": body.get("model"),
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": reply}}],
                             "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(reply.split()),
                                       "total_tokens": len(prompt.split()) + len(reply.split())}})

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
