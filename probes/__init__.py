"""Probes: one module per source of samples (see ai_bottleneck.probes.base for the protocol)."""
