"""Who logs in: sshd's request, PAM."""
