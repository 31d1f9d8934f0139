"""The registry's rules. Services take a session, never commit, and raise ``registry.errors``."""
