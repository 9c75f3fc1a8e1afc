#!/usr/bin/env python3
"""The GRIP origin behind Pushpin for `herald bench --flavor pushpin`.

Pushpin proxies each subscription `GET ...?topic=T` here; the answer tells it
to hold the response open as an event stream on channel T (the raw, still
form-encoded, query value: `herald bench` names the channel the same way when
it publishes). It is only asked when a subscriber connects, never when an
update is delivered, so its speed does not enter the measures (compare.sh
runs it next to the generator, not on the hub's core).

Usage: grip-origin.py [PORT]   (default 8095, on 127.0.0.1)
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        query = urlsplit(self.path).query
        topics = [v for k, _, v in (p.partition("=") for p in query.split("&")) if k == "topic"]
        if not topics:
            body = b"missing topic\n"
            self.send_response(400)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = b":ok\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Grip-Hold", "stream")
        self.send_header("Grip-Channel", ", ".join(topics))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8095
    Server(("127.0.0.1", port), Origin).serve_forever()
