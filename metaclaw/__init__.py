"""MetaClaw: agents that improve themselves from their own conversations."""

from metaclaw.config import MetaClawConfig

__all__ = ["MetaClawConfig"]
