"""sei-tf: self-supervised super-resolution and deblurring with Scale-Equivariant Imaging.

Install with exactly one onnxruntime build:
    pip install -e ".[cpu,test]"      # CPU machines (and CI)
    pip install -e ".[gpu,serve]"     # NVIDIA machines
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
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "tensorboard>=2.21,<2.22",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "scikit-image>=0.24,<0.27",
        "pillow>=10,<14",
        "tifffile>=2024.1",
        "pydicom>=3.0,<4",
        "tqdm>=4.66,<5",
        "tf2onnx>=1.17,<1.18",
        "onnx>=1.17,<1.24",
    ],
    extras_require={
        "cpu": ["onnxruntime>=1.20,<1.33"],
        "gpu": ["onnxruntime-gpu>=1.20,<1.33", "tensorflow[and-cuda]>=2.21,<2.22"],
        "serve": ["fastapi>=0.110,<1", "uvicorn>=0.29,<1", "python-multipart>=0.0.9,<0.1"],
        "test": ["pytest>=8,<10", "httpx>=0.27,<1", "matplotlib>=3.8,<4"],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
