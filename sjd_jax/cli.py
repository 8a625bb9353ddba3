"""``sjd-jax`` command line: one subcommand per job."""

from __future__ import annotations

import sys

COMMANDS = {
    "bench": "sjd_jax.bench",
    "convert": "convert.cli",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sjd-jax {" + ",".join(COMMANDS) + "} [options]\n\n"
              "  bench     AR vs Jacobi-family samplers: NFE, wall time, compile time (JSON)\n"
              "  convert   PyTorch/safetensors checkpoints -> sjd-jax checkpoint directories\n")
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"sjd-jax: error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
