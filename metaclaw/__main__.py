"""`python -m metaclaw` runs the CLI (the supervisor starts children this way)."""

from metaclaw.cli import main

main()
