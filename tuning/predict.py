"""`tuning predict --model DIR IMAGE [IMAGE ...]`: classify image files with an exported model.

One line per image, tab-separated: its path, then the most likely class and its probability
(with --top K, the K most likely, each class then its probability):

    digits/7.png	7	0.9981

Every image is decoded before any is classified: a missing file, a directory or a file that is
not an image stops the command with one line on stderr and exit status 2, before anything is
printed, so that the output is all the images or none.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tuning.cli import (
    OneLineParser,
    add_verbosity_arguments,
    configure_logging,
    fail,
    positive_int,
)
from tuning.errors import UsageError


def build_parser(prog: str = "python -m tuning.predict") -> OneLineParser:
    parser = OneLineParser(prog=prog, description="Classify images with a model written by "
                                                  "tuning export.")
    parser.add_argument("--model", type=Path, required=True, metavar="DIR",
                        help="the directory tuning export wrote (--out)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    parser.add_argument("--top", type=positive_int, default=1, metavar="K",
                        help="print the K most likely classes of each image (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    add_verbosity_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m tuning.predict") -> int:
    args = build_parser(prog).parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    try:
        from tuning.exported import load_model  # noqa: PLC0415 - imports torch: after parsing

        model = load_model(args.model, args.device)
        pixels = [model.pixels(Path(image)) for image in args.images]
        results = model.top_classes(pixels, args.top)
    except UsageError as exc:
        return fail(str(exc))
    for image, top in zip(args.images, results, strict=True):
        print("\t".join([image, *(f"{name}\t{p:.4f}" for name, p in top)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
