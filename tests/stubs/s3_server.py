"""Stub object store: moto's S3-compatible HTTP server as a real process on 127.0.0.1.

Why this exists: the ledger root and the skill library can live on S3 (docs/scaling.md). The
tests and the scale-out benchmark need a real S3 API over a socket — s3fs, DuckDB (through
fsspec) and LanceDB's native object store all speak HTTP to it exactly as they would to AWS — with
no network, keys or cost. moto[server] implements the API, conditional puts included.

One adjustment: moto checks `If-None-Match: *` and then stores the object in two steps, and its
server is threaded, so two racing conditional puts could both succeed — AWS S3 makes that check
atomic. The ledger's concurrent-writer guarantee rests on that atomicity, so this wrapper
serialises mutating requests (PUT/POST/DELETE) to give the stand-in S3's semantics; reads stay
concurrent.

    python tests/stubs/s3_server.py --port 0      # prints READY http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.stubs.process import StubProcess

# moto reads these when it builds its backends; the stub needs no real credentials.
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "metaclaw-test",
    "AWS_SECRET_ACCESS_KEY": "metaclaw-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def create_app() -> Any:
    from moto.server import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    writes = threading.Lock()

    def serialised(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] in ("PUT", "POST", "DELETE"):
            with writes:
                return list(app(environ, start_response))
        return app(environ, start_response)

    return serialised


def serve(host: str, port: int) -> None:
    from werkzeug.serving import make_server

    os.environ.update({k: os.environ.get(k, v) for k, v in FAKE_ENV.items()})
    server = make_server(host, port, create_app(), threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"READY http://{host}:{server.server_port}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    serve(args.host, args.port)


class StubS3(StubProcess):
    """The stub as a subprocess. `env` is what a MetaClaw process needs to use it (standard AWS
    variables: credentials, region, endpoint); `bucket(name)` creates a bucket."""

    server_file = Path(__file__).resolve()

    def environment(self) -> dict[str, str]:
        return dict(FAKE_ENV)

    @property
    def env(self) -> dict[str, str]:
        return {**FAKE_ENV, "AWS_ENDPOINT_URL": self.url}

    def bucket(self, name: str) -> str:
        """Create a bucket; returns `s3://name`."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=FAKE_ENV["AWS_REGION"],
            aws_access_key_id=FAKE_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return f"s3://{name}"


if __name__ == "__main__":
    main()
