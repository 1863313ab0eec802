"""Probes: one module per source of samples (see probes.base for the protocol)."""
