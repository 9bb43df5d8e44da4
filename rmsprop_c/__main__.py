"""Command line: ``python -m rmsprop_c info``."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rmsprop_c", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show the build and runtime configuration")
    args = parser.parse_args(argv)
    if args.command == "info":
        from rmsprop_c import show_config
        show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
