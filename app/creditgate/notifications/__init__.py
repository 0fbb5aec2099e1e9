"""Notifications: an outbox written with its cause, delivered signed and at least once."""
