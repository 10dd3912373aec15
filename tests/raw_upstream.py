"""A byte-exact upstream for proxy tests: an HTTP/1.1 server on a real socket that answers every
request with a fixed response chosen by path, then closes the connection.

For what `tests/stubs/upstream_server.py` cannot be made to send: an SSE stream whose last
event lacks its blank line, an error with rate-limit headers.
"""

from __future__ import annotations

import asyncio
import threading


class RawUpstream:
    """`responses` maps a path substring to (status line + headers, body); first match wins."""

    def __init__(self, responses: dict[str, tuple[bytes, bytes]]) -> None:
        self.responses = responses
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        sizes = [h.split(":", 1)[1] for h in header_lines if h.lower().startswith("content-length")]
        await reader.readexactly(int(sizes[0]) if sizes else 0)
        path = request_line.split(" ")[1]
        head_out, body = next(r for key, r in self.responses.items() if key in path)
        writer.write(head_out + b"\r\nconnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
