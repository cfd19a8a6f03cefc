"""benchmarks/init_choice.py chooses on a validation split that the quality benchmark's test set never meets."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import init_choice  # noqa: E402
import quality  # noqa: E402

from sei_tf.data import SAMPLE_NAMES  # noqa: E402


def test_validation_images_are_training_photographs_of_the_quality_benchmark():
    photographs = set(SAMPLE_NAMES) | set(quality.MATE_NAMES)
    val = set(init_choice.VAL_NAMES)
    assert val <= photographs - set(quality.TEST_NAMES)
    assert not val & set(quality.TEST_NAMES)
    # The stereo pair stays together: both in training or both out.
    assert len(val & {"motorcycle_left", "motorcycle_right"}) in (0, 2)
    # Enough left to train on.
    assert len(photographs - set(quality.TEST_NAMES) - val) >= 10


def test_each_init_gets_its_own_cells(tmp_path):
    base = {"backbone": "cnn", "backbone_args": {"features": 32, "num_blocks": 8}, "seed": 0, "steps": 1000}
    dirs = {init_choice.cell_dir_of(init_choice.cell_config(base, init, seed), str(tmp_path))
            for init in ("glorot_uniform", "torch") for seed in (0, 1)}
    assert len(dirs) == 4
    assert base["backbone_args"] == {"features": 32, "num_blocks": 8}  # the base configuration is not changed
