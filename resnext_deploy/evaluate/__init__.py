"""Judging artifacts: verify (every artifact on every runner) and bench (trtexec-style timing)."""
