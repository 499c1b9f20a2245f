"""Intake: validate a request, store it (group-committed), hand it to processing."""
