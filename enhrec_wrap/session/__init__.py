"""One recorded session's life: start, child, sinks, watchdog, end, and recovery."""
