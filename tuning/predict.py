"""`tuning predict --model DIR IMAGE [IMAGE ...]`: classify image files with an exported model.

One line per image, tab-separated: its path, then the most likely class and its probability
(with --top K, the K most likely, each class then its probability):

    digits/7.png	7	0.9981

Every image is decoded before any is classified: a missing file, a directory, a file that is not
an image, or one that is not a regular file (a FIFO, a socket, a device: refused unopened, since
reading a FIFO waits for a writer, forever if none comes) stops the command with one line on
stderr and exit status 2, before anything is printed, so that the output is all the images or
none. With --skip-unreadable each such image is named in a warning instead and the others are
classified (exit status 2 only when none can be read).

The network is rebuilt from config.json and weights.pt (a user's own builder needs its module
for that). Where it cannot be rebuilt here (the builder's module is not installed: one INFO
line; the builder fails or makes another network, or weights.pt is missing or damaged: one
WARNING line), the export's portable program (model.pt2, which holds the network and its
weights and needs torch alone) classifies the images instead, with the same logits.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m tuning.predict` runs as `tuning predict` does, before the imports below (which
    # load torch for seconds): a Ctrl-C meanwhile ends in one line, not a traceback.
    from tuning.command import run_module

    sys.exit(run_module("predict"))

import logging
from pathlib import Path

from tuning.cli import (
    OneLineParser,
    add_verbosity_arguments,
    configure_logging,
    fail,
    positive_int,
)
from tuning.errors import UsageError, counted, one_line

log = logging.getLogger("tuning")


def build_parser(prog: str = "python -m tuning.predict") -> OneLineParser:
    parser = OneLineParser(prog=prog, description="Classify images with a model written by "
                                                  "tuning export.")
    parser.add_argument("--model", type=Path, required=True, metavar="DIR",
                        help="the directory tuning export wrote (--out)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    parser.add_argument("--top", type=positive_int, default=1, metavar="K",
                        help="print the K most likely classes of each image (default 1)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="classify the images that can be read, each one that cannot "
                             "named in a warning (default: any such image stops the command "
                             "before anything is printed)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    add_verbosity_arguments(parser)
    return parser


def load(directory: Path, device: str):
    """The export's model: its network rebuilt (tuning.load_model), else, where it cannot be
    rebuilt here with its weights (the builder cannot be imported, fails or makes another
    network; weights.pt missing or damaged), its portable program
    (tuning.exported.load_program), which holds the network and its weights."""
    # Imported here: they import torch, which --help and a bad flag should not wait for.
    from tuning.exported import (  # noqa: PLC0415
        BuilderUnavailable,
        ExportError,
        NotRebuilt,
        load_model,
        load_program,
        program_file,
        read_config,
    )

    try:
        return load_model(directory, device)
    except NotRebuilt as exc:
        config = read_config(directory)
        name = program_file(config)
        if name is None:
            raise ExportError(f"{exc} (the export has no model.pt2, nor a checked TorchScript "
                              "program, to classify with instead)") from None
        try:
            program = load_program(directory, device)
        except ExportError as failed:
            raise ExportError(f"{exc}; nor can its {name} run instead: {failed}") from None
        # A module that is not installed here is the expected case (a machine with torch
        # only); one that is there but broken, or builds another network, is worth a warning.
        quiet = isinstance(exc, BuilderUnavailable) and exc.not_installed
        log.log(logging.INFO if quiet else logging.WARNING,
                "%s: classifying with the export's %s, the same network as a torch program",
                f"the network's builder {config['model']['model']!r} cannot be imported here"
                if quiet else exc, name)
        return program


def read_images(model, images: list[str], skip_unreadable: bool) -> tuple[list[str], list]:
    """The images that can be read and their pixels. One that cannot raises ExportError,
    unless `skip_unreadable`: then it is named in a warning and left out, and ExportError
    comes only when none can be read."""
    from tuning.exported import ExportError  # noqa: PLC0415 - as in load

    model.image_mode()  # a model that reads no image files: said once, not per image
    read, pixels, skipped = [], [], []
    for image in images:
        try:
            pixels.append(model.pixels(Path(image)))
        except ExportError as exc:
            if not skip_unreadable:
                raise
            log.warning("skipped: %s", exc)
            skipped.append(exc)
            continue
        read.append(image)
    if len(skipped) == 1 and not read:
        raise skipped[0]
    if not read:
        raise ExportError(f"none of the {counted(len(images), 'image')} can be read (the "
                          f"last: {skipped[-1]})")
    return read, pixels


def main(argv: list[str] | None = None, prog: str = "python -m tuning.predict") -> int:
    args = build_parser(prog).parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    try:
        model = load(args.model, args.device)
        images, pixels = read_images(model, args.images, args.skip_unreadable)
        results = model.top_classes(pixels, args.top)
    except UsageError as exc:
        return fail(exc)
    for image, top in zip(images, results, strict=True):
        print("\t".join([one_line(image),
                         *(f"{one_line(name)}\t{p:.4f}" for name, p in top)]))
    return 0

