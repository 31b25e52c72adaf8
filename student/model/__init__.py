"""The DistillNeRF-style student model (its issue builds it piece by piece): so far the
sparse 3D convolution that is correct on the CPU with many threads (`sparse_conv.py`)."""
