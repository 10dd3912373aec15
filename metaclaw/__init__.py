"""MetaClaw: agents that improve themselves from their own conversations."""
