"""Veilleuse's pipeline: the app, settings, topics, the CLI and the local stack of services."""
