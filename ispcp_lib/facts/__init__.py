"""Read-only probes. A fact returns plain data, and None for "absent" (not the same as empty)."""
