"""The local stack of real services (Kafka, Elasticsearch, PostgreSQL, Redis, Mosquitto)."""
