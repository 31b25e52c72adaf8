"""The DistillNeRF-style student model (`distillnerf.py` assembles it): sparse 3D
convolution correct on the CPU with many threads (`sparse_conv.py`), the parameterized
space (`space.py`), two-stage depth (`depth.py`), lifting and pooling into two voxel
levels (`lift.py`, `voxels.py`), volume rendering (`render.py`) and the 2D networks
(`heads.py`)."""
