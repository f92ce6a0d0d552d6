"""Fixtures shared by the root + netns tests."""

from support.gateway_lab import lab_factory  # noqa: F401  (registers the fixture)
