"""Benchmarks: figures printed side by side with a reference (curl, the configured tbf
rate). Run one with ``python -m tests.bench.<name>``; they are not collected as tests."""
