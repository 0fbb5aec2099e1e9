"""Bring your own key: a user's provider keys, encrypted at rest."""
