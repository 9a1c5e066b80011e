"""Storage: SQLAlchemy models, engines, the repository and the Alembic migrations."""
