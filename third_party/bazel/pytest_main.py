"""Entry point for Bazel py_test targets: runs pytest on the files in argv.

Bazel starts tests in the runfiles copy of the workspace, so the
workspace-relative paths passed in `args` resolve there.
"""
import os
import sys

import pytest

if __name__ == "__main__":
    # Bazel gives each test a private writable scratch dir; keep caches there.
    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:
        os.environ.setdefault("TMPDIR", tmp)
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, "mpl"))
    args = ["-q", "-p", "no:cacheprovider"]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args.append("--junitxml=" + xml)
    sys.exit(pytest.main(args + sys.argv[1:]))
