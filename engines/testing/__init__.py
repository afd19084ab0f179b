"""Test doubles shipped with the engines, for tests and documentation examples:
nothing in the application imports them."""
