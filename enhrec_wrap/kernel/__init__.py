"""The BPF programs: loading them, reading their rings, decoding records."""
