"""Database: engines, sessions, models and Alembic migrations."""
