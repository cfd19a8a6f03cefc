"""Export tools: ONNX restorer (`export.onnx_export`), Triton repository (`export.triton`).

Importing this package imports neither TensorFlow nor onnx: each module loads
its heavy dependencies when called.
"""
