"""Scenes: the unified driving-scene model, dataset readers and the synthetic world."""

from .errors import DatasetNotFoundError, InvalidSceneIdError, SceneDataError, SceneError
from .ids import validate_scene_id
from .model import CameraSample, Frame, LidarPoints, LidarSweep, Scene

__all__ = [
    "CameraSample", "DatasetNotFoundError", "Frame", "InvalidSceneIdError", "LidarPoints",
    "LidarSweep", "Scene", "SceneDataError", "SceneError", "validate_scene_id",
]
