"""TensorFlow's start-up lines are dropped at import; anything else written meanwhile is kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from droughtwatch_assets.core.frameworks import noise

# Printed by TensorFlow 2.21 on import (copied from a real run).
REAL_NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796125867.185974   11088 port.cc:153] oneDNN custom operations are on. You may "
    b"see slightly different numerical results due to floating-point round-off errors from "
    b"different computation orders. To turn them off, set the environment variable "
    b"`TF_ENABLE_ONEDNN_OPTS=0`.\n",
    b"I0000 00:00:1796125867.242498   11088 cpu_feature_guard.cc:227] This TensorFlow binary is "
    b"optimized to use available CPU instructions in performance-critical operations.\n",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    b"TensorFlow with the appropriate compiler flags.\n",
]


def test_the_start_up_lines_are_noise_and_warnings_are_not():
    assert all(noise(line) for line in REAL_NOISE)
    assert not noise(b"W0000 00:00:1796125867.1 11088 gpu.cc:12] Could not find cuda drivers\n")
    assert not noise(b"E0000 00:00:1796125867.1 11088 x.cc:1] a real error\n")
    assert not noise(b"Traceback (most recent call last):\n")


def _stderr_of(code: str, tmp_path=None, env=None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    return out.stderr


def test_what_an_import_writes_besides_the_noise_reaches_stderr(tmp_path):
    (tmp_path / "chatty.py").write_bytes(
        b"import os\n"
        b"os.write(2, " + repr(b"".join(REAL_NOISE)).encode() + b")\n"
        b"os.write(2, b'W0000 a real warning\\n')\n"
    )
    err = _stderr_of(
        """
        import sys
        sys.path.insert(0, ".")
        from droughtwatch_assets.core.frameworks import quiet_import
        print("before", file=sys.stderr)
        quiet_import("chatty")
        print("after", file=sys.stderr)
        """,
        tmp_path,
    )
    assert err.splitlines() == ["before", "W0000 a real warning", "after"]


def test_importing_keras_prints_none_of_tensorflows_start_up_lines():
    err = _stderr_of(
        """
        from droughtwatch_assets.core.frameworks import quiet_import
        keras = quiet_import("keras")
        keras.ops.add(1, 1)
        """
    )
    assert "InitializeLog" not in err and "oneDNN" not in err, err


# Printed by TensorFlow 2.21 during model.fit on a tf.data map (copied from `droughtwatch demo`).
NODEDEF_LINE = (
    "E0000 00:00:1796131362.316031   13075 node_def_util.cc:682] NodeDef mentions attribute "
    "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; "
    "signature=input_dataset:variant> This may be expected if your graph generating binary is "
    "newer  than this binary. Unknown attributes will be ignored. NodeDef: {{node "
    "ParallelMapDatasetV2/_14}}"
)


def test_training_drops_tensorflows_nodedef_line_and_passes_the_rest_as_it_comes():
    err = _stderr_of(
        f"""
        import os, sys, time
        from droughtwatch_assets.core.frameworks import filtered_stderr
        with filtered_stderr():
            os.write(2, b"E0000 00:00:1.0 1 x.cc:1] a real error\\n")
            os.write(2, {(NODEDEF_LINE + chr(10)).encode()!r})
            print("from python", file=sys.stderr, flush=True)
            os.write(2, b"partial line without newline")
        print("after", file=sys.stderr)
        """
    )
    assert err.splitlines() == [
        "E0000 00:00:1.0 1 x.cc:1] a real error",
        "from python",
        "partial line without newlineafter",
    ]
