"""The store, the hub of the pipeline: sharded zarr v3 stores with a versioned typed
schema (`spec`, `attrs`, `provenance`, `feature_runs`), per-stage commits (`store`,
`scene_view`), ingest (the only reader of datasets), the scene back from the store
(`stored_scene`), the manifest, the reader, the validator, inspect, migrate and the
DistillNeRF export."""
