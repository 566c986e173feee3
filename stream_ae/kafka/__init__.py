"""Kafka-side building blocks: topic administration, batch production with Kafka's own
partitioning, and a real local broker for development and tests."""
