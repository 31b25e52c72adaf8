"""The teachers: the per-scene neural field (`nerf`), the foundation-model features
(`foundation`), and the volume rendering the neural field and the student share
(`volume`). Their stage jobs read the store and commit their own arrays to it."""
