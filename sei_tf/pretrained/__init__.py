"""Restorers shipped inside the package, loadable by name (issue #12).

Each shipped model is `<name>.keras` (an `SEIModel`: backbone, physics and
objective, float32, no optimizer state) next to its model card `<name>.md`
(data, physics, budget, test PSNR next to the non-learned baseline). `index.json`
holds one row per model: what `sei-tf models` lists and what `find` resolves.
They are trained by benchmarks/train_pretrained.py from measurements only.

    from sei_tf import pretrained
    pretrained.names()                       # ['sei-cnn-sr2-rgb', ...]
    pretrained.path("sei-cnn-sr2-rgb")       # .../sei_tf/pretrained/sei-cnn-sr2-rgb.keras
    sei_tf.loading.load_model("sei-cnn-sr2-rgb")   # names work wherever a model path does

This module reads JSON only (no TensorFlow), so listing works on a serving install.
"""

import json
import os

from sei_tf.errors import SeiTfError

HERE = os.path.dirname(os.path.abspath(__file__))
INDEX_NAME = "index.json"


class UnknownModelError(SeiTfError, ValueError):
    """A name that is not a shipped model."""


def index(folder=HERE):
    """{name: row} of the shipped models ({} when none is shipped)."""
    path = os.path.join(folder, INDEX_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def names(folder=HERE):
    return sorted(index(folder))


def is_name(text):
    """True when `text` looks like a model name rather than a path (no separator, no extension)."""
    text = os.fspath(text)
    return os.sep not in text and "/" not in text and not os.path.splitext(text)[1]


def entry(name, folder=HERE):
    """The index row of a shipped model; an error listing the shipped names otherwise."""
    rows = index(folder)
    if name not in rows:
        shipped = ", ".join(sorted(rows)) or "none"
        raise UnknownModelError(f"{name!r} is neither a model file nor a shipped model (shipped: {shipped}). "
                                "`sei-tf models` lists them.")
    return rows[name]


def path(name, folder=HERE):
    """The .keras file of a shipped model."""
    file = os.path.join(folder, entry(name, folder)["file"])
    if not os.path.isfile(file):
        raise UnknownModelError(f"The shipped model {name!r} is listed in {INDEX_NAME} but {file} is missing "
                                "(a broken install?).")
    return file


def card(name, folder=HERE):
    """The model card (Markdown text) of a shipped model."""
    with open(os.path.join(folder, entry(name, folder)["card"])) as f:
        return f.read()


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def update_index(index_path, name, row):
    """Adds or replaces one model's row in index.json (atomic rewrite)."""
    rows = {}
    if os.path.isfile(index_path):
        with open(index_path) as f:
            rows = json.load(f)
    rows[name] = row
    _write_atomic(index_path, json.dumps(dict(sorted(rows.items())), indent=1) + "\n")


def write_card(card_path, name, row, train_names):
    """Writes the model card of one shipped model from its index row."""
    t, test = row["training"], row["test"]
    text = f"""# {name}

A `{row['backbone']}` restorer ({row['backbone_config']['features']} features, \
{row['backbone_config']['num_blocks']} residual blocks, {row['parameters']:,} parameters, \
{row['bytes'] / 1024:.0f} kB) for **{row['physics']}**, {row['channels']} channel(s), trained with \
the `{row['objective']}` objective (SURE + scale equivariance) from measurements only.

- Data: {t['images']} photographs of the quality benchmark's training split (benchmarks/quality.py: \
scikit-image's colour photographs and Debian mate-backgrounds nature photographs, shorter side 256 px\
{', converted to BT.601 luma' if row['channels'] == 1 else ''}), measured with the physics above: \
{', '.join(train_names)}. The ground truth was never read in training.
- Physics: {row['physics']} (noise in 8-bit units).
- Budget: {t['steps']} steps, batch {t['batch_size']}, {t['patch_size']}-pixel measurement patches, \
Adam {t['learning_rate']:g} constant for half the steps then linear decay to 0.01x, {t['precision']} \
compute, seed {t['seed']}; {t['minutes']} min on {t['cpu']} (shared with other jobs), {t['date']}.
- Initialisation: the backbone's default ({row['init']}).
- Test (the benchmark's held-out photographs {', '.join(test['images'])}; full images, 8-bit luma):
  PSNR {test['psnr']:.2f} ± {test['psnr_std']:.2f} dB, SSIM {test['ssim']:.4f}; the non-learned baseline \
({test['baseline']}) {test['baseline_psnr']:.2f} dB, SSIM {test['baseline_ssim']:.4f}.
- Use: `sei-tf restore --model {name} ...`, `sei-tf export --model {name} ...`, or fine-tune it on your \
own measurements with `sei-tf train --init_from {name} ...`. Made with benchmarks/train_pretrained.py; \
outside this physics (another kernel, factor or noise level) expect less: fine-tune.
"""
    _write_atomic(card_path, text)
