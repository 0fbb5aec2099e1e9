"""Admin-only routes."""
