"""Audit events in Teleport's format."""
