"""Datasets that need no download, and dataset statistics."""
