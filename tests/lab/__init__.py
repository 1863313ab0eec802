"""The scenario lab: a stand-in inference service on a simulated GPU, a load generator,
scenario definitions and scoring, to measure the agent's accuracy and detection latency on
real, shaped workloads. Test tooling only; not shipped in the package."""
