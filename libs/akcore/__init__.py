"""Shared building blocks of the four services: wire schemas, subjects, config, ids, pure logic."""
