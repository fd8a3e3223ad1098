"""Loopback stand-ins in front of (or instead of) the test S3 service: a TLS front whose
certificate only a given CA vouches for, and a scripted S3 endpoint that answers every request
with the status it is told and notes which attempt of its call each request was."""

from __future__ import annotations

import re
import socket
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class TlsFront:
    """HTTPS on 127.0.0.1 with ``cert``/``key``, each connection forwarded to ``port`` (plain
    HTTP); ``connections`` counts the TCP connections a client made (its attempts)."""

    def __init__(self, port: int, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        target = port
        self.connections = 0
        front = self

        class Forward(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                front.connections += 1
                try:
                    tls = context.wrap_socket(self.request, server_side=True)
                    upstream = socket.create_connection(("127.0.0.1", target), timeout=20)
                except (OSError, ssl.SSLError):
                    return
                back = threading.Thread(target=_pump, args=(upstream, tls), daemon=True)
                back.start()
                _pump(tls, upstream)
                back.join(20)
                for s in (tls, upstream):
                    s.close()

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Forward)
        self._server.daemon_threads = True
        self.endpoint = f"https://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except (OSError, ssl.SSLError):
        pass


class ScriptedS3:
    """An HTTP endpoint that answers every request with ``status`` (an S3 error body naming
    ``code``), or with ``status`` None drops the connection unanswered (a reset); ``requests``
    counts what arrived, so a test sees how many attempts a client made, and ``connections``
    the connections (a client speaking TLS to it makes no request)."""

    def __init__(self, status: int | None, code: str) -> None:
        self.requests = 0
        self.connections = 0
        self.seen: list[str] = []          # "METHOD PATH" of each request
        self.attempts: list[int] = []      # which attempt of its call each was (amz-sdk-request)
        script = self

        class Answer(BaseHTTPRequestHandler):
            def setup(self) -> None:
                script.connections += 1
                super().setup()

            def _any(self) -> None:
                script.requests += 1
                script.seen.append(f"{self.command} {self.path}")
                attempt = re.search(r"attempt=(\d+)", self.headers.get("amz-sdk-request", ""))
                script.attempts.append(int(attempt.group(1)) if attempt else 1)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if status is None:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    self.close_connection = True
                    self.connection.close()
                    return
                body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>scripted {status}</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
