"""Command line of rmsprop_c.

    python -m rmsprop_c info     build and runtime configuration (show_config)
    python -m rmsprop_c bench    throughput against the same-traffic ceiling and peers
    python -m rmsprop_c demo     train NumPy models with every flavor

``bench`` and ``demo`` take their own options: ``python -m rmsprop_c bench --help``.
"""

import sys

COMMANDS = {
    "info": "rmsprop_c._config",
    "bench": "rmsprop_c.bench",
    "demo": "rmsprop_c.demo",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in {"-h", "--help"} else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
