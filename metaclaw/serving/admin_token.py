"""The policy server's admin token: a secret file only this user can read.

`/admin/*` changes which weights production serves, so it needs more than "can reach
127.0.0.1" (any local process, or a web page through the browser). The first start of the
policy server under a METACLAW_HOME (normally by `metaclaw up`) writes a random token to
`METACLAW_HOME/policy-admin.token` with mode 0600; the server requires it in the
`X-MetaClaw-Admin-Token` header, and the deploy flow (`deploy/notify.py`) reads it from the same
file. It stays the same across restarts, so a flow running elsewhere keeps working.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TOKEN_FILE = "policy-admin.token"
HEADER = "x-metaclaw-admin-token"


def token_path(home: Path) -> Path:
    return Path(home) / TOKEN_FILE


def read_admin_token(home: Path) -> str | None:
    """The token, or None when no policy server has created one under this home yet."""
    try:
        return token_path(home).read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_admin_token(home: Path) -> str:
    """The token, created (0600, atomically: two starters agree on one) when missing."""
    path = token_path(home)
    found = read_admin_token(home)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_urlsafe(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another starter got there first: use theirs
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    token = read_admin_token(home)
    assert token is not None
    return token
