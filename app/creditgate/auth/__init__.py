"""API keys and the one Principal dependency every route uses."""
