"""Operating-system primitives: cgroups, privileges."""
