"""Foundation-model teachers: DINOv2 and CLIP dense feature maps, PCA-reduced, per image.

`models`, `weights`, `dense`, `extract`: the models and their dense features; `pca`,
`positional`: the reduction; `job`: the stage's jobs over a store (`fit_feature_basis`,
`extract_scene_features`); `query`: CLIP text heat maps over a store's features.
"""
