"""The audit log on disk: the daily files, the session files, their readers."""
