"""sei-tf: self-supervised super-resolution and deblurring with Scale-Equivariant Imaging.

The base install is what serving an exported .onnx restorer needs, without TensorFlow;
training, evaluation and export add the `train` extra. Install exactly one onnxruntime
build:
    pip install -e ".[train,cpu,serve,test]"   # CPU machines and CI: everything
    pip install ".[cpu,serve]"                 # serving ONNX files only (no TensorFlow)
    pip install -e ".[train,gpu,serve]"        # NVIDIA machines
onnxruntime and onnxruntime-gpu share one import folder: with both, the CUDA
provider disappears, so never combine the [cpu] and [gpu] extras.
"""

import re

from setuptools import find_packages, setup

with open("sei_tf/__init__.py") as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="sei-tf",
    version=VERSION,
    description="Train image super-resolution and deblurring networks from measurements alone "
                "(Scale-Equivariant Imaging) and serve them with ONNX Runtime.",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["sei_tf", "sei_tf.*", "export", "serving"]),
    # The shipped restorers (under 1 MB each), their cards and index (sei_tf.pretrained).
    package_data={"sei_tf.pretrained": ["*.keras", "*.md", "index.json"]},
    # Serving (serving/, sei_tf.cli, sei_tf.errors, sei_tf.data.files): no TensorFlow.
    install_requires=[
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "pillow>=10,<14",
        "tifffile>=2024.1",
        "pydicom>=3.0,<4",
        "tqdm>=4.66,<5",  # progress bars, serving.restore's included
    ],
    extras_require={
        # Training, evaluation, simulation, the demo and ONNX export.
        "train": [
            "tensorflow>=2.21,<2.22",
            "keras>=3.15,<4",
            "tensorboard>=2.21,<2.22",
            "scikit-image>=0.24,<0.27",
            "tf2onnx>=1.17,<1.18",
            "onnx>=1.17,<1.24",
        ],
        "cpu": ["onnxruntime>=1.20,<1.33"],
        "gpu": ["onnxruntime-gpu>=1.20,<1.33", "tensorflow[and-cuda]>=2.21,<2.22"],
        "serve": ["fastapi>=0.110,<1", "uvicorn>=0.29,<1", "python-multipart>=0.0.9,<0.1",
                  "prometheus-client>=0.20,<1"],  # /metrics in Prometheus text format
        "test": ["pytest>=8,<10", "httpx>=0.27,<1", "matplotlib>=3.8,<4",
                 "hypothesis>=6.100,<7"],  # property-based fuzzing of the image readers
    },
    entry_points={"console_scripts": ["sei-tf = sei_tf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
