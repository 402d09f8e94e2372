"""Which study files there are: the built-in ones shipped inside the package, and a `studies/`
folder in the current directory, whose files override built-ins of the same name.

`tuning studies` lists them; `tuning search --study NAME` finds NAME's file here unless
`--config` names one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuning.errors import UsageError

BUILTIN_DIR = Path(__file__).resolve().parent / "studies"
LOCAL_DIR = Path("studies")


@dataclass(frozen=True)
class StudyFileEntry:
    """One study file that `--study NAME` can name."""

    name: str
    """The study name it gives (its file name without .toml)."""
    path: Path
    """Where the file is."""
    origin: str
    """'local' (./studies, overrides a built-in of the same name) or 'built-in'."""


def available() -> list[StudyFileEntry]:
    """Every study file by name, a local one in place of a built-in of the same name."""
    found = {p.stem: StudyFileEntry(p.stem, p, "built-in")
             for p in sorted(BUILTIN_DIR.glob("*.toml"))}
    if LOCAL_DIR.is_dir():
        found.update({p.stem: StudyFileEntry(p.stem, p, "local")
                      for p in sorted(LOCAL_DIR.glob("*.toml"))})
    return sorted(found.values(), key=lambda entry: entry.name)


def study_file(name: str) -> Path:
    """The file of study `name`: ./studies/NAME.toml, else the built-in one."""
    local = LOCAL_DIR / f"{name}.toml"
    if local.is_file():
        return local
    builtin = BUILTIN_DIR / f"{name}.toml"
    if builtin.is_file():
        return builtin
    names = ", ".join(entry.name for entry in available())
    raise UsageError(f"no study file for {name!r}: neither {local} nor a built-in one; give "
                     f"--config FILE, or --config NAME to start from one of: {names}")


def config_file(given: Path) -> Path:
    """The study file `--config` names: a file, else the name of one (`--config mnist`, as
    `tuning studies` lists them), so that a study of one's own name can start from a built-in
    space without copying its file. A path with a folder in it is always a path."""
    if given.is_file() or given.parent != Path("."):
        return given
    if given.name in {entry.name for entry in available()}:
        return study_file(given.name)
    return given if given.suffix == ".toml" or given.exists() else study_file(given.name)


def builtin_study_file(name: str) -> Path:
    """A built-in study file, whatever the current directory holds (the tutorial baseline)."""
    return BUILTIN_DIR / f"{name}.toml"
