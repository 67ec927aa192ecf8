"""The ``ak`` command line."""
