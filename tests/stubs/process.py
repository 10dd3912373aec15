"""Running a stand-in server as a real subprocess: every stub prints `READY <url>` once it
accepts connections, and is stopped with SIGTERM (SIGKILL after 5 s)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Self


class StubProcess:
    """Base for the stub servers; subclasses say which script and arguments (`command`)."""

    server_file: Path  # the stub's own script
    ready_timeout = 60.0

    def __init__(self) -> None:
        self.url = ""  # http://host:port, no path
        self.proc: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None

    def arguments(self) -> list[str]:
        return ["--port", "0"]

    def environment(self) -> dict[str, str]:
        return {}

    def start(self) -> Self:
        """Spawn the server and block until it prints READY."""
        if self.proc is not None:
            return self
        proc = subprocess.Popen(
            [sys.executable, str(self.server_file), *self.arguments()],
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, **self.environment()},
        )
        self.proc = proc
        ready = threading.Event()
        found: list[str] = []

        def pump() -> None:  # find READY, then keep draining so the child never blocks
            assert proc.stdout is not None
            for line in proc.stdout:
                if not found and line.startswith("READY "):
                    found.append(line.split(" ", 1)[1].strip())
                    ready.set()
            ready.set()

        name = f"{self.server_file.stem}-stdout"
        self._pump = threading.Thread(target=pump, name=name, daemon=True)
        self._pump.start()
        ready.wait(self.ready_timeout)
        if not found:
            code = proc.poll()
            self.stop()
            raise RuntimeError(f"{self.server_file.name} did not print READY (exit code {code})")
        self.url = found[0]
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._pump is not None:
            self._pump.join(5)  # ends at EOF, i.e. once the child is gone
            self._pump = None
        if proc.stdout is not None:
            with contextlib.suppress(Exception):
                proc.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
