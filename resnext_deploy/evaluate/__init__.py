"""Judging artifacts: parity metrics, verify (every artifact on every runner) and bench (trtexec-style timing)."""
