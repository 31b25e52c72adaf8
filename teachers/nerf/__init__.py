"""EmerNeRF-style per-scene neural-field teacher.

Modules, down the flow (a module imports only those above it):
- `hash_grid` (+ `hash_kernel`, `hash_tcnn`), `field`, `dynamic`, `sky`, `rays`,
  `sampler`: the encodings, fields, training rays and where along a ray to sample;
  volume rendering itself is `distillprep.teachers.volume`, shared with the student;
- `config` (`FitConfig`) and `config_io` (config files);
- `teacher`: the model (`Teacher`, `build_teacher`) and `render_rays`;
- `checkpoint`: saving and loading a teacher (loading needs no training code);
- `virtual`, `evaluate`, `render`, `outputs`: rendering a fitted teacher into its outputs;
- `fit`: training (losses, optimiser, the loop, resuming from a checkpoint), which
  rendering never imports;
- `job`: the stage's jobs over a store, `fit_teacher` and `render_teacher` (what the CLI
  and the flows call).
"""
