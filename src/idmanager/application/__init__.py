"""The application: the service over a repository, and the use cases that own a transaction."""
