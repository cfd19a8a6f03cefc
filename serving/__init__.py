"""Serving for exported sei-tf restorers: onnxruntime, no TensorFlow.

- `serving.Restorer`: Python API (metadata, providers, tiled inference);
- `python -m serving.restore`: batch CLI;
- `python -m serving.http`: HTTP service (FastAPI + uvicorn);
- `python export/to_triton.py`: Triton model-repository layout.
"""

from serving.metadata import MetadataError, RestorerMetadata
from serving.restorer import DeviceError, InputError, ModelFileError, Restorer, RestorerError

__all__ = ["Restorer", "RestorerError", "ModelFileError", "DeviceError", "InputError",
           "RestorerMetadata", "MetadataError"]
