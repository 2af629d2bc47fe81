"""A deliberately slow HTTP server on 127.0.0.1 for the hang tests.

It speaks just enough HTTP/1.1 over a plain socket to be believed, and then
dribbles: one byte every ``interval`` seconds (per path with ``routes``), from the very first byte of
the status line (``headers=True``: http.client is still reading headers
when requests' per-read timeout would have to fire) or from the first byte
of the body.  Each connection is served by its own thread until the client
hangs up or the server stops; :attr:`SlowServer.connections` counts them so
a test can wait for the client to be stuck.

Used as a context manager; every thread is a daemon and ``stop()`` closes the
listening socket and every connection.
"""

import socket
import threading
import time
from typing import Dict, List, Optional, Tuple


class SlowServer:
    def __init__(self, body: bytes = b"{}", *, interval: float = 0.5,
                 headers: bool = False, content_type: str = "application/json",
                 routes: Optional[Dict[str, Tuple[bytes, float]]] = None) -> None:
        self.body = body
        #: path -> (body, seconds between bytes; 0: all at once), before the default
        self.routes = routes or {}
        self.interval = interval
        self.drip_headers = headers
        self.content_type = content_type
        self.connections = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._open: List[socket.socket] = []
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            path = request.split(b" ", 2)[1].decode("ascii", "replace").split("?")[0]
            body, interval = self.routes.get(path, (self.body, self.interval))
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: " + self.content_type.encode() +
                    b"\r\nContent-Length: %d\r\n\r\n" % len(body))
            if not interval:
                conn.sendall(head + body)
            elif self.drip_headers:
                self._drip(conn, head + body, interval)
            else:
                conn.sendall(head)
                self._drip(conn, body, interval)
        except OSError:
            pass                    # the client gave up: what the tests want
        finally:
            conn.close()

    def _drip(self, conn: socket.socket, data: bytes, interval: float) -> None:
        for index in range(len(data)):
            if self._stopped.wait(interval):
                return
            conn.sendall(data[index:index + 1])

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def __enter__(self) -> "SlowServer":
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        for sock in [self._listener] + self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_client(self, seconds: float = 20.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.connections:
                return True
            time.sleep(0.05)
        return False
