"""Stateful stream rules on Kafka (Faust): the license registry and what is due."""
