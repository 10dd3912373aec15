"""Converse through the MetaClaw proxy with the stock `openai` SDK.

Every turn is captured by the proxy (and later scored and trained on); nothing in the client
changes but the base URL. Start the proxy first (`metaclaw up`, or `metaclaw proxy`), then:

    python examples/converse.py "Plan a 3-day trip to Kyoto" "Make day 2 rainy-day proof"

The base URL and key come from the same MetaClawConfig the proxy uses (`metaclaw connect`
prints them for other clients). Turns of one conversation share a session: the proxy sees
each request continue the previous one (or, as here, a `prompt_cache_key`, like OpenClaw).
"""

from __future__ import annotations

import sys
import uuid

from openai import OpenAI

from metaclaw import MetaClawConfig
from metaclaw.connect import proxy_target


def converse(prompts: list[str], *, stream_last: bool = True) -> list[str]:
    target = proxy_target(MetaClawConfig())
    client = OpenAI(base_url=target.base_url, api_key=target.api_key)
    session = f"example-{uuid.uuid4().hex[:8]}"
    messages: list[dict[str, str]] = []
    replies = []
    for i, prompt in enumerate(prompts):
        messages.append({"role": "user", "content": prompt})
        kwargs = {
            "model": target.model or "default",
            "messages": messages,
            "extra_body": {"prompt_cache_key": f"{session}:0"},
        }
        if stream_last and i == len(prompts) - 1:  # agents stream; the proxy passes it through
            chunks = client.chat.completions.create(stream=True, **kwargs)
            reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            reply = client.chat.completions.create(**kwargs).choices[0].message.content or ""
        messages.append({"role": "assistant", "content": reply})
        replies.append(reply)
        print(f"you: {prompt}\nassistant: {reply}\n")
    print(f"session {session}: {len(replies)} turns captured (see `metaclaw sql`)")
    return replies


if __name__ == "__main__":
    converse(sys.argv[1:] or ["Hello! What can you do?", "Say it in five words."])
