"""Operator tools: ``bridge configure`` (webhook settings at the provider) and ``bridge simulate``
(sample notifications posted to a bridge deployment)."""
