"""Benchmarks of host-agent against its baselines (bare sudo, OpenSSH); see bench/README.md."""
