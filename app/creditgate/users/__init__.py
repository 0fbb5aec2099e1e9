"""The caller's own balance and history."""
