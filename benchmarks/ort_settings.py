"""What the inference benchmarks share: the CPU's description and onnxruntime CPU sessions by setting."""

import os
import platform

LEVELS = ("basic", "extended", "all")


def cpu_info():
    """CPU model, usable cores and the int8/bf16 instruction sets (VNNI, AMX) from /proc/cpuinfo."""
    model, cpu_flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not cpu_flags:
                    cpu_flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16") if f in cpu_flags]
    return {"model": model or platform.processor() or "unknown", "cores": len(os.sched_getaffinity(0)),
            "vnni": any("vnni" in f for f in isa), "amx": "amx_int8" in isa, "isa": isa}


def ort_session(path, threads, spinning, level="all"):
    """A CPU session: `threads` intra-op threads (None/0: default), spinning 'on'/'off'/'default', `level`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    if spinning != "default":
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "on" else "0")
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
