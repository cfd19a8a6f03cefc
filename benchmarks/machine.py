"""The machine a benchmark ran on, for the header of its table."""

import os
import platform


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description():
    """The CPU's model name and its logical core count, e.g. 'Intel(R) Xeon(R) Processor, 2 logical cores'."""
    return f"{cpu_model()}, {os.cpu_count()} logical cores"
