"""Ranking semantics: the feature encoder shared by training and serving, and the value model."""
