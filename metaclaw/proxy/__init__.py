"""HTTP proxy between chat clients and the upstream LLM: parsing, translation, recording."""
