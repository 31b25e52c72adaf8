"""Command line and Prefect flows: wiring only; the science lives in the stage packages."""
