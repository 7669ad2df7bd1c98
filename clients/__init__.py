"""Clients and data helpers for models served by the toolkit."""
