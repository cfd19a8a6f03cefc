"""Serving where TensorFlow is not installed: `pip install ".[cpu,serve]"` has no TensorFlow,
keras or tf2onnx, and serving must still load, restore and serve.

The test environment has TensorFlow, so the children run with a `sitecustomize.py` (put
first on PYTHONPATH) whose import hook makes `tensorflow`, `keras` and `tf2onnx`
unimportable and records every attempt to import them. Each child writes one line
at exit: the attempts and the blocked modules in `sys.modules`; both must be empty.
An attempt counts even when the code catches the ImportError, since with TensorFlow
installed that import would have loaded it.

Covered: `serving.Restorer` on an ONNX file from sei-tf 0.1 and on one exported now
(with the `physics` metadata key), the HTTP app (FastAPI TestClient), and the
command lines `python -m serving.restore`, `python -m serving.http` and
`sei-tf serve-restore` (through `python -m sei_tf.cli`).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V0_1 = os.path.join(ROOT, "tests", "fixtures", "v0_1")
BLOCKED = ("tensorflow", "keras", "tf2onnx")

BLOCKER = f'''
"""Test helper (tests/test_serving_without_tf.py): {", ".join(BLOCKED)} cannot be imported here."""
import atexit
import json
import os
import sys

BLOCKED = {BLOCKED!r}
attempts = []


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())


@atexit.register
def _report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    with open(os.environ["SEI_TF_BLOCK_LOG"], "a") as f:
        f.write(json.dumps({{"argv": sys.argv, "attempts": attempts, "loaded": loaded}}) + "\\n")
'''

# Runs in a blocked child: the Python API and the HTTP app.
IN_PROCESS = '''
import io
import json
import sys

import numpy as np
from PIL import Image

try:
    import tensorflow  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker is not active")
import sitecustomize
sitecustomize.attempts.clear()  # the check above was ours

from serving import Restorer

old, new, image_png, fixtures = sys.argv[1:5]

# An ONNX file written by sei-tf 0.1: same output as the 0.1 Keras model.
r = Restorer(old, device="cpu")
y = np.load(fixtures + "/sr2_sei_input.npy")
expected = np.load(fixtures + "/sr2_sei_output.npy")
assert np.abs(r.run(y) - expected).max() < 1e-4

# A file exported now: the physics is in the metadata as JSON, read without TensorFlow.
r = Restorer(new, device="cpu", tile=16)
assert r.metadata.physics["class_name"] == "Blur" and r.metadata.kernel == "gaussian:1.5"
grey = np.asarray(Image.open(image_png))
out = r.restore(grey)
assert out.shape == grey.shape and out.dtype == np.uint8

from fastapi.testclient import TestClient

from serving.http import create_app

client = TestClient(create_app(r))
assert client.get("/health").json()["status"] == "ok"
meta = client.get("/metadata").json()
assert meta["physics"]["class_name"] == "Blur" and meta["training"]["method"] == "sure"
response = client.post("/restore", files={"file": ("g.png", open(image_png, "rb").read(), "image/png")})
assert response.status_code == 200 and response.headers["content-type"] == "image/png"
served = np.asarray(Image.open(io.BytesIO(response.content)))
assert np.array_equal(served, out)
print("ok")
'''


def _run(args, env, cwd):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.slow
def test_serving_runs_without_tensorflow(tmp_path):
    from export import onnx_export, random_models

    new = tmp_path / "deblur_grey.onnx"
    keras_path = random_models.make_model(tmp_path / "deblur_grey.keras", "cnn_tiny", "deblur", channels=1,
                                          kernel="gaussian:1.5", noise_sigma=3.0, method="sure")
    onnx_export.export(keras_path, new, log=lambda *_: None)
    old = os.path.join(V0_1, "sr2_sei.onnx")
    from skimage import data as skdata

    image_png = tmp_path / "camera.png"
    Image.fromarray(np.ascontiguousarray(skdata.camera()[200:237, 220:261])).save(image_png)  # 37x41 grey
    (tmp_path / "in").mkdir()
    Image.fromarray(np.ascontiguousarray(skdata.astronaut()[180:203, 200:229])).save(tmp_path / "in" / "a.png")

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "in_process.py").write_text(textwrap.dedent(IN_PROCESS))
    log = tmp_path / "imports.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), ROOT]), "SEI_TF_BLOCK_LOG": str(log)}
    env.pop("PYTHONSTARTUP", None)

    results = {
        "api+http": _run([str(tmp_path / "in_process.py"), old, str(new), str(image_png), V0_1], env, tmp_path),
        "serving.restore": _run(["-m", "serving.restore", "--model", old, str(tmp_path / "in"),
                                 "--output", str(tmp_path / "out1"), "--quiet"], env, tmp_path),
        "sei-tf serve-restore": _run(["-m", "sei_tf.cli", "serve-restore", "--model", str(new),
                                      str(image_png), "--output", str(tmp_path / "out2"), "--quiet"], env, tmp_path),
        # Loads the module, its flags and the error path; the served app itself is checked above.
        "serving.http": _run(["-m", "serving.http", "--model", str(tmp_path / "missing.onnx")], env, tmp_path),
    }
    for name, proc in results.items():
        expected = 1 if name == "serving.http" else 0
        assert proc.returncode == expected, f"{name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"{name}:\n{proc.stderr[-3000:]}"
    assert results["api+http"].stdout.strip() == "ok"
    assert "error: model file not found" in results["serving.http"].stderr
    assert np.asarray(Image.open(tmp_path / "out1" / "a.png")).shape == (46, 58, 3)  # x2
    assert np.asarray(Image.open(tmp_path / "out2" / "camera.png")).shape == (37, 41)

    reports = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(reports) == len(results), reports  # every child ran with the blocker
    for report in reports:
        assert report["attempts"] == [] and report["loaded"] == [], report
