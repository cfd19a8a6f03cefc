"""Export tools: ONNX restorer (`export.onnx_export`, CLI `export/to_onnx.py`), Triton
repository (`export.triton`, CLI `export/to_triton.py`), and random-init models saved like
a training run for tests and benchmarks (`export.random_models`).

Importing this package imports neither TensorFlow nor onnx: each module loads
its heavy dependencies when called.
"""
