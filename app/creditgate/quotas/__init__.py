"""Plans and monthly API-call quotas, counted in Redis so every gateway worker shares them."""
