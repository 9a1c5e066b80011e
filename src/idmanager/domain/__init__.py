"""The domain: the ID format, the sequence entity, errors and the repository interface.

Pure Python: nothing here imports SQLAlchemy, FastAPI or Pydantic.
"""
