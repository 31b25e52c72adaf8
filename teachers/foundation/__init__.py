"""Foundation-model teachers: DINOv2 and CLIP dense feature maps, PCA-reduced, per image."""
