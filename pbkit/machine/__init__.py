"""The machine record: host, GPUs (through NVML), software versions; collected, never typed."""
