"""Storage schemas: sharded zarr v3 stores, manifest, validator (coming with its issue)."""
