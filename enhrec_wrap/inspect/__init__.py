"""Reading recorded sessions back, and checking the host."""
