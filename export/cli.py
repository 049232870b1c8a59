"""`deltadit-export`: split, (quantize,) export ONNX, build engines, write a bundle."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("deltadit-export: the export stage is not implemented yet (see the export issue); "
          "`deltadit plan` shows the plan and block groups an export would use.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
