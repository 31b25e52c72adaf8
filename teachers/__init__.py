"""Per-scene neural-field and foundation-model teachers (coming with their issues)."""
