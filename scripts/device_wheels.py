"""Wheels for an offline machine with its own Python and torch (the lent GPU machine), in
parts small enough to carry one at a time.

    python scripts/device_wheels.py [--python-version 3.12] [--ray] [--out .device-wheels]
        [--part-mib 62] [--have torch,torchvision,numpy,pillow]

The device tool copies at most 64 MiB of untracked files per command, and that machine
reaches no package index. This script downloads, for the target Python on x86-64 Linux, the
project's dependencies and with --ray also `ray[tune]` (for the budget race against Ray Tune,
scripts/bench_budget.py), leaves out the packages that machine has (--have), and packs the
wheels into folders of at most --part-mib MiB: part1, part2, ... under --out. Ray's wheel
(79 MB) and pyarrow's (55 MB) are each too large to carry whole, so they lose what Ray Tune
never loads: Ray's Java jar, pyarrow's Flight library and C++ headers.

Each part goes over in its own command, back to back while the machine is warm (files a
command carried stay for the next); the last installs all of them. The script prints those
commands.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

# Files a wheel keeps out of the bundle: (project name, a pattern of its paths).
TRIM = {
    "ray": re.compile(r"^ray/jars/"),
    # lib.so links every other library but Flight (and the S3 one, which pyarrow.fs loads).
    "pyarrow": re.compile(r"^pyarrow/(include/|src/|tests/|libarrow_flight\.|_flight\.|"
                          r"libarrow_python_flight\.)"),
}


def project_name(wheel: Path) -> str:
    """The normalized project name of a wheel file (`Pillow-...` and `pillow-...` alike)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def requirements(ray: bool, have: set[str]) -> list[str]:
    """The project's dependencies (from pyproject.toml) that the machine lacks, and Ray Tune."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [r for r in project["dependencies"]
              if re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() not in have]
    return wanted + (["ray[tune]"] if ray else [])


def download(reqs: list[str], python_version: str, into: Path) -> None:
    platforms = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64",
                 "any"]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                    "--implementation", "cp", "--python-version", python_version,
                    *[arg for p in platforms for arg in ("--platform", p)],
                    "-d", str(into), *reqs], check=True)


def trim(wheel: Path, drop: re.Pattern) -> int:
    """Rewrites `wheel` without the files `drop` matches (and their RECORD lines); bytes saved."""
    before = wheel.stat().st_size
    trimmed = wheel.with_suffix(".trimmed")
    with zipfile.ZipFile(wheel) as source, \
            zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            if drop.match(info.filename):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not drop.match(line.decode().split(",")[0]))
            target.writestr(info, data)
    trimmed.replace(wheel)
    return before - wheel.stat().st_size


def pack(wheels: list[Path], capacity: int) -> list[list[Path]]:
    """The wheels in parts of at most `capacity` bytes: largest first, each into the first
    part with room."""
    parts: list[list[Path]] = []
    sizes: list[int] = []
    for wheel in sorted(wheels, key=lambda w: -w.stat().st_size):
        size = wheel.stat().st_size
        if size > capacity:
            raise SystemExit(f"{wheel.name} is {size / MIB:.0f} MiB, more than a part holds")
        for i, used in enumerate(sizes):
            if used + size <= capacity:
                parts[i].append(wheel)
                sizes[i] += size
                break
        else:
            parts.append([wheel])
            sizes.append(size)
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--ray", action="store_true", help="add ray[tune], trimmed")
    parser.add_argument("--out", type=Path, default=ROOT / ".device-wheels")
    parser.add_argument("--part-mib", type=int, default=62)
    parser.add_argument("--have", default="torch,torchvision,numpy,pillow",
                        help="packages the machine has already (comma-separated)")
    args = parser.parse_args(argv)
    have = {name.strip().lower() for name in args.have.split(",") if name.strip()}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        download(requirements(args.ray, have), args.python_version, folder)
        wheels = [w for w in folder.glob("*.whl") if project_name(w) not in have]
        for wheel in wheels:
            if project_name(wheel) in TRIM:
                saved = trim(wheel, TRIM[project_name(wheel)])
                print(f"{wheel.name}: {saved / MIB:.1f} MiB left out")
        parts = pack(wheels, args.part_mib * MIB)
        shutil.rmtree(args.out, ignore_errors=True)
        for i, part in enumerate(parts, 1):
            (args.out / f"part{i}").mkdir(parents=True)
            for wheel in part:
                shutil.move(wheel, args.out / f"part{i}" / wheel.name)
            size = sum(w.stat().st_size for w in (args.out / f"part{i}").iterdir())
            print(f"part{i}: {len(part)} wheels, {size / MIB:.1f} MiB")

    out = args.out.resolve().relative_to(ROOT) if args.out.resolve().is_relative_to(ROOT) \
        else args.out
    print("\nOn the machine, one command per part, back to back while it is warm:")
    for i in range(1, len(parts)):
        print(f"  carry [{out}/part{i}]: ls {out}")
    # --no-deps: the parts hold every dependency the machine lacks, and pip --target would
    # otherwise look for the ones it has (torch, numpy) among the wheels too.
    print(f"  carry [{out}/part{len(parts)}]: python3 -m pip install -q --no-index --no-deps "
          f"--target .device-packages {out}/part*/*.whl && "
          "export PYTHONPATH=$PWD/.device-packages && ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
