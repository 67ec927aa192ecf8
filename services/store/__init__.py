"""The store service: the system of record in SQL."""
