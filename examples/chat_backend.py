#!/usr/bin/env python3
"""The chat backend of the README: `mesa serve --config examples/chat.toml` POSTs client events here.

Python 3 standard library only. Run: `python3 examples/chat_backend.py [PORT]` (default 8000).

- SAY {"text": "..."}            -> everyone else gets SAY {"from": <user id>, "text": "..."}
- WHISPER {"to": id, "text": ...} -> that user gets WHISPER {"from": <user id>, "text": "..."}
- anything else, or bad input    -> refused: the sender gets PROXY_ERROR "refused" with the reason
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer(event):
    """What mesa should do about one event (see crates/mesa-cli/README.md, "Event proxy")."""
    if event.get("event") != "dispatch":
        return {}
    frame, sender = event["frame"], event["user_id"]
    d = frame.get("d") if isinstance(frame.get("d"), dict) else {}
    text = d.get("text")
    if not isinstance(text, str) or not text.strip():
        return {"refuse": "a chat line needs a non-empty \"text\""}
    if frame.get("t") == "SAY":
        said = {"op": 0, "t": "SAY", "d": {"from": sender, "text": text}}
        return {"send": {"message": said, "excluding": [sender]}}
    if frame.get("t") == "WHISPER" and isinstance(d.get("to"), str):
        whispered = {"op": 0, "t": "WHISPER", "d": {"from": sender, "text": text}}
        return {"send": {"message": whispered, "recipients": [d["to"]]}}
    return {"refuse": "unknown event type %r" % frame.get("t")}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.dumps(answer(json.loads(self.rfile.read(length)))).encode()
            status = 200
        except (ValueError, KeyError, TypeError) as problem:
            body, status = json.dumps({"error": str(problem)}).encode(), 400
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # one line per chat message would drown the gateway's log


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("chat backend on http://127.0.0.1:%d/events" % server.server_port, flush=True)
    server.serve_forever()
