"""The MQTT→Kafka connector and the PostgreSQL and Elasticsearch sinks."""
