"""Deadline-aware batching of candidate rows across requests (see ``batcher.py``)."""
