"""The real OpenClaw CLI end to end: a turn through our proxy, then OpenClaw's own transcript
replayed into the same ledger — the live view and the imported views of the turn must agree.

Needs OpenClaw (npm `openclaw`, Node ≥ 24) in `.tools/openclaw`: `scripts/install-openclaw.sh`
puts it there (scripts/test.sh runs it, so CI has it). Skipped, with that reason, without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, ProxyProcess, rows
from tests.stubs.upstream_server import StubUpstream

BIN = Path(
    os.environ.get("METACLAW_OPENCLAW_BIN", REPO / ".tools" / "openclaw" / "node_modules" / ".bin")
)
INSTALLED = (BIN / "openclaw").exists() and (BIN / "node").exists()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not INSTALLED,
        reason=f"OpenClaw is not installed in {BIN}: run "
        "scripts/install-openclaw.sh (needs npm; installs Node 24 + openclaw)",
    ),
]


def openclaw(env: dict[str, str], *args: str, timeout: float = 240) -> dict[str, Any]:
    result = subprocess.run(
        [str(BIN / "openclaw"), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"openclaw {args[0]} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def replay(home: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metaclaw", "replay", *map(str, paths)],
        cwd=REPO,
        env={
            **os.environ,
            "METACLAW_HOME": str(home),
            "METACLAW_CONFIG": str(home / "no.toml"),
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_openclaw_turn_via_proxy_and_its_replayed_transcript_agree(
    stub: StubUpstream, tmp_path: Path
) -> None:
    sid = f"e2e-{uuid.uuid4().hex[:8]}"
    prompt = f"Say hi to the MetaClaw end-to-end test {sid}"
    state, workspace = tmp_path / "openclaw-state", tmp_path / "export-workspace"
    state.mkdir()
    workspace.mkdir()
    home = tmp_path / "metaclaw-home"
    with ProxyProcess(home, {"METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1"}) as proxy:
        config = {
            "models": {
                "providers": {
                    "metaclaw": {
                        "api": "openai-completions",
                        "baseUrl": proxy.url + "/v1",
                        "apiKey": "sk-local",
                        "models": [
                            {
                                "id": "fake-model",
                                "name": "fake-model",
                                "reasoning": False,
                                "input": ["text"],
                                "contextWindow": 32768,
                                "maxTokens": 1024,
                                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                                "compat": {"supportsPromptCacheKey": True},
                            }
                        ],
                    }
                }
            },
            "agents": {
                "defaults": {
                    "model": {"primary": "metaclaw/fake-model"},
                    "sandbox": {"mode": "off"},
                    "workspace": str(state / "workspace"),
                }
            },
        }
        (state / "openclaw.json").write_text(json.dumps(config))
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "OPENCLAW_STATE_DIR": str(state),
            "OPENCLAW_CONFIG_PATH": str(state / "openclaw.json"),
            "OPENCLAW_NO_AUTO_UPDATE": "1",
            "DO_NOT_TRACK": "1",
            "CI": "true",
        }

        out = openclaw(env, "agent", "--local", "--session-id", sid, "--json", "--message", prompt)
        assert out["meta"]["agentMeta"]["sessionId"] == sid

        # the live view: captured by the proxy, grouped by OpenClaw's prompt_cache_key
        (live,) = proxy.turns(f"session_id = '{sid}'")
        assert live["source"] == "live" and live["turn_index"] == 0
        live_request = json.loads(live["request"])
        assert live_request["prompt_cache_key"].startswith(f"{sid}:")
        assert any(
            m["role"] == "user" and isinstance(m["content"], str) and prompt in m["content"]
            for m in live_request["messages"]
        )

        # OpenClaw's own view: its trajectory export and its SQLite store, replayed
        export = openclaw(
            env,
            "sessions",
            "export-trajectory",
            "--session-key",
            f"agent:main:explicit:{sid}",
            "--output",
            "e2e",
            "--workspace",
            str(workspace),
            "--json",
            timeout=120,
        )
        events = Path(export["outputDir"]) / "events.jsonl"
        result = replay(home, events, state)
        assert result.returncode == 0, result.stderr
        assert "records skipped (see below)       │ 0" in result.stdout

        imported = {
            r["source"]: r
            for r in rows(
                proxy.paths, f"SELECT * FROM turns WHERE session_id = '{sid}' AND source <> 'live'"
            )
        }
        assert set(imported) == {"backfill:openclaw-trajectory", "backfill:openclaw-sqlite"}
        for source, row in imported.items():
            assert row["turn_index"] == live["turn_index"], source
            assert row["completion_text"] == live["completion_text"], source
            assert row["model"] == live["model"] == "fake-model", source
            assert row["finish_reason"] == live["finish_reason"] == "stop", source
            assert json.loads(row["usage"]) == json.loads(live["usage"]), source
            assert json.loads(row["request"])["messages"] == [
                {"role": "user", "content": prompt}
            ], source
            assert abs((row["ts_end"] - live["ts_end"]).total_seconds()) < 30, source
            assert row["status"] == live["status"] == "ok"

        again = replay(home, events, state)
        assert again.returncode == 0
        assert rows(proxy.paths, f"SELECT count(*) AS n FROM turns WHERE session_id = '{sid}'") == [
            {"n": 3}
        ], "a second replay adds nothing"
