"""Sinks: Kafka topics into PostgreSQL and Elasticsearch, on one framework (runner.py)."""
