"""Reading JSON-lines logs defensively: bounded lines, precise reasons for every bad one.

Why not `for line in file`: one 2 GB line (a pasted core dump, a base64 video) would be read
whole into memory. Lines longer than the limit are skipped by reading through them in chunks.
Every decoding failure becomes a `Problem` naming the line and what is wrong with it, so the
import goes on and the user learns exactly what was left out.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from metaclaw.replay.model import Problem

_CHUNK = 1 << 20


@dataclass(slots=True)
class Line:
    number: int  # 1-based
    data: bytes | None  # None: longer than the limit (skipped unread)
    size: int
    terminated: bool  # False only for a last line without a newline


def open_log(path: Path) -> BinaryIO | gzip.GzipFile:
    """Binary handle on a log file; `.gz` files are decompressed as they are read."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=_CHUNK)


def read_lines(fh: BinaryIO | gzip.GzipFile, max_bytes: int) -> Iterator[Line]:
    """Lines of a binary stream; a line over `max_bytes` is yielded with `data=None`."""
    number = 0
    while True:
        raw = fh.readline(max_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while True:  # skip the rest of the long line without keeping it
                rest = fh.readline(_CHUNK)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield Line(number, None, size, True)
            continue
        terminated = raw.endswith(b"\n")
        yield Line(number, raw, len(raw), terminated)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def decode_record(line: Line, where: str, max_bytes: int) -> dict[str, Any] | Problem | None:
    """The JSON object on a line; None for a blank line; a Problem saying why it is unusable."""
    if line.data is None:
        return Problem(
            where,
            f"record of {_mib(line.size)} exceeds replay.max_record_bytes ({_mib(max_bytes)}); "
            "skipped",
        )
    data = line.data.strip()
    if not data:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Problem(
                where,
                f"not valid UTF-8 (byte 0x{data[bad.start]:02x} at column {bad.start + 1}); "
                "skipped",
            )
        if not line.terminated:
            return Problem(where, f"truncated record: the file ends mid-line ({exc}); skipped")
        return Problem(where, f"invalid JSON ({exc}); skipped")
    if not isinstance(value, dict):
        return Problem(where, f"expected a JSON object, got {type(value).__name__}; skipped")
    return value


def parse_ts(value: Any) -> int | None:
    """Epoch microseconds from epoch s/ms/µs numbers or ISO-8601 text; None when unusable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return int(parsed.timestamp() * 1_000_000)
    if isinstance(value, int | float):
        if value != value or value <= 0:  # nan, zero, negative: not a real time
            return None
        if value < 1e11:  # seconds (until the year 5138)
            return int(value * 1_000_000)
        if value < 1e14:  # milliseconds
            return int(value * 1_000)
        return int(value)
    return None
