"""The query API for support (activity, alerts, message search)."""
