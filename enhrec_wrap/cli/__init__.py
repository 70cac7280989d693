"""The command lines: the only place that prints errors and picks exit codes."""
