# distillprep: `make demo` and `make test` are all a new user needs; each sets up .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# nuscenes-devkit 1.2.0 pins numpy<2, a stale pin: it works with numpy 2. It goes in with
# --no-deps; its real runtime dependencies are listed in pyproject.toml.
NUSCENES_DEVKIT := nuscenes-devkit==1.2.0
# Waymo's wheel pins TensorFlow 2.13 and numpy 1.23; with --no-deps only its protos come
# (dataset_pb2 needs protobuf alone, pinned in pyproject.toml)
WAYMO_PROTOS := waymo-open-dataset-tf-2-12-0==1.6.7
DEMO_OUT ?= demo_out
# a short teacher: enough to see the scene in its depth and virtual views, not a good fit
DEMO_TEACHER_STEPS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv demo test test-slow bench lint clean

venv: $(STAMP)

# Installs only when pyproject.toml or this Makefile changed: a second run takes seconds.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=69" wheel
	$(BIN)/pip install -q -e '.[dev,cpu]'
	$(BIN)/pip install -q --no-deps $(NUSCENES_DEVKIT) $(WAYMO_PROTOS)
	$(BIN)/python -m distillprep.teachers.nerf.hash_kernel
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distillprep synth $(DEMO_OUT)/nuscenes --format nuscenes --scenes 2 --frames 4 \
		--width 400 --height 225 --sweeps 1 --seed 0 --overwrite
	$(BIN)/distillprep scenes $(DEMO_OUT)/nuscenes --dataset nuscenes --sweeps
	$(BIN)/distillprep preview $(DEMO_OUT)/nuscenes --dataset nuscenes --scene scene-0001 \
		--frame 0 --out $(DEMO_OUT)/preview_scene-0001_frame0.png
	@echo "demo: the whole preparation as one Prefect flow (local API, no server to start);"
	@echo "demo: its DINOv2 and CLIP features use RANDOM weights (no pretrained weights here)"
	rm -rf $(DEMO_OUT)/store.zarr $(DEMO_OUT)/store.zarr.work
	$(BIN)/distillprep prepare $(DEMO_OUT)/nuscenes --dataset nuscenes \
		--out $(DEMO_OUT)/store.zarr --config configs/demo.yaml --random-init-features \
		--teacher-steps $(DEMO_TEACHER_STEPS)
	@echo "demo: the dataset is read once, by ingest: everything below runs from the store alone"
	rm -rf $(DEMO_OUT)/nuscenes
	$(BIN)/distillprep validate $(DEMO_OUT)/store.zarr --deep
	$(BIN)/distillprep query $(DEMO_OUT)/store.zarr --text "a car" --scene scene-0001 \
		--png $(DEMO_OUT)/query_a_car --max-images 2
	$(BIN)/distillprep inspect $(DEMO_OUT)/store.zarr --scene scene-0001 \
		--png $(DEMO_OUT)/store_previews
	$(BIN)/distillprep export distillnerf $(DEMO_OUT)/store.zarr $(DEMO_OUT)/distillnerf \
		--scene scene-0001
	@echo "demo: one epoch of the student's streaming loader over the store"
	$(BIN)/distillprep loader-check $(DEMO_OUT)/store.zarr --workers 2 --batch-size 2 \
		--resize 228x128

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

bench: $(STAMP)
	$(BIN)/python tests/bench.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
