"""One recorded session's life: start, child, watchdog, end, and recovery."""
