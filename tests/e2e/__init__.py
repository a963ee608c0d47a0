"""End-to-end tests of duraray through the in-process Client."""
