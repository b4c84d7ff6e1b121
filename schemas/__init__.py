"""The Avro schemas (``*.avsc``) of every topic the pipeline writes."""
