"""Student stage: streaming loader and sparse-voxel model (coming with its issue)."""
