"""Upstream adapters: call providers in priority order and fail over on their faults."""
