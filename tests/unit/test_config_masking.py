"""Credentials written into a URL are masked wherever the configuration is shown or recorded."""

from __future__ import annotations

import json

from metaclaw.config import Settings
from metaclaw.config_tools import MASK, config_snapshot, effective, mask_url


def test_url_credentials_are_masked_in_config_show_and_train_snapshots() -> None:
    settings = Settings(
        _env_file=None,
        upstream={"base_url": "https://alice:hunter2@llm.example/v1?api-key=sk-live-123&region=eu"},
    )
    shown = effective(settings)["upstream.base_url"]
    assert shown == f"https://{MASK}@llm.example/v1?api-key={MASK}&region=eu"
    snapshot = json.dumps(config_snapshot(settings))
    assert "hunter2" not in snapshot and "sk-live-123" not in snapshot and "llm.example" in snapshot


def test_mask_url_leaves_plain_values_alone() -> None:
    assert mask_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert mask_url("no url here: a@b") == "no url here: a@b"
    assert mask_url("s3://bucket/x?token=abc&x=1") == f"s3://bucket/x?token={MASK}&x=1"
