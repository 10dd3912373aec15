"""Agents: several agents behind one MetaClaw, each with its own key, turns and skills.

`registry` is the pure model (names, key hashes, skill sharing), `store` its file under
METACLAW_HOME and the proxy's cached view, `cli` the `metaclaw agents` commands (docs/agents.md).
"""

from metaclaw.agents.registry import Agent, AgentError, Registry, agent_for_key
from metaclaw.agents.store import AgentKeys, registry_path
from metaclaw.ledger.schemas import DEFAULT_AGENT

__all__ = [
    "DEFAULT_AGENT",
    "Agent",
    "AgentError",
    "AgentKeys",
    "Registry",
    "agent_for_key",
    "registry_path",
]
