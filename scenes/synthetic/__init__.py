"""Procedural driving worlds with exact ground truth, written in real dataset formats."""
