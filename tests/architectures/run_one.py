"""Print, as one JSON line, how onnxport and the bare exporters fare on one architecture of zoo.py.

    .venv-vision/bin/python tests/architectures/run_one.py ssdlite

Run as a script (tests/test_architectures.py does, with the interpreter of the right venv), so that
torchvision models run where torchvision is installed.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from zoo import outcome


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # onnxport's own line
    (name,) = argv
    print(json.dumps(outcome(name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
