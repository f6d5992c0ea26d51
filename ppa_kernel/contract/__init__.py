"""The contract both sides share: plan format and checks, the program derived from a
plan, the statistics' definitions, the message protocol, configuration and errors."""
