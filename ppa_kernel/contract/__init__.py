"""The contract both sides share: plan format and checks, the program derived from a
plan, the statistics' definitions, the message protocol, configuration and errors."""

VERSION = "0.1.0"
"""The package version, which each party kernel publishes in its hello."""
