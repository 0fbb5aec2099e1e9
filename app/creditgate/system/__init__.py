"""Service routes: index and health."""
