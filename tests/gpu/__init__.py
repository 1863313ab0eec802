"""The validation run for a real GPU (docs/validation.md): one command on a lent GPU machine,
and its dry run here against the fake NVML backend."""
