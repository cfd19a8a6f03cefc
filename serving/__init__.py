"""Serving for exported sei-tf restorers: onnxruntime, no TensorFlow.

- `serving.Restorer`: Python API (metadata, providers, tiled inference);
- `python -m serving.restore` (`sei-tf serve-restore`): batch CLI;
- `python -m serving.http` (`sei-tf serve`): HTTP service (FastAPI + uvicorn);
- `python export/to_triton.py` (`sei-tf triton`): Triton model-repository layout.

Needs the base install plus onnxruntime (`pip install ".[cpu,serve]"`), not TensorFlow.
"""

from serving.metadata import MetadataError, RestorerMetadata
from serving.restorer import DeviceError, InputError, ModelFileError, Restorer, RestorerError

__all__ = ["Restorer", "RestorerError", "ModelFileError", "DeviceError", "InputError",
           "RestorerMetadata", "MetadataError"]
