#!/bin/sh
echo "coverage is not supported in this offline Bazel setup" >&2
exit 1
