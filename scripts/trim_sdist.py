"""Write a trimmed copy of the llama-cpp-python source archive, small enough to
carry to a machine with no network (scripts/gpu_bench.sh builds it there).

    python scripts/trim_sdist.py llama_cpp_python-0.3.36.tar.gz .gpu/llama_cpp_python-0.3.36-slim.tar.gz

Left out: git metadata, documentation, and llama.cpp's vocabulary-only test
models, media and benchmarks; none of them is read by the CMake build of the
library. The source may also be an unpacked directory. Exits with an error when
the result is not under the size limit (64 MiB by default).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

# Paths inside the package's top directory, left out with everything below them.
DROPPED = (
    ".git",
    ".github",
    "docs",
    "vendor/llama.cpp/.git",
    "vendor/llama.cpp/.github",
    "vendor/llama.cpp/docs",
    "vendor/llama.cpp/models",
    "vendor/llama.cpp/media",
    "vendor/llama.cpp/benches",
)
LIMIT_MIB = 64


def dropped(relative: PurePosixPath) -> bool:
    return any(relative == PurePosixPath(d) or PurePosixPath(d) in relative.parents for d in DROPPED)


def _members(source: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """(member, contents) of the source archive or directory, named under one top directory."""
    if source.is_dir():
        for path in sorted([source, *source.rglob("*")]):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            relative = path.relative_to(source).as_posix()
            info = tarfile.TarInfo(source.name if relative == "." else f"{source.name}/{relative}")
            stat = path.stat()
            info.mtime, info.mode = int(stat.st_mtime), stat.st_mode & 0o777
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                yield info, None
            else:
                info.size = stat.st_size
                with open(path, "rb") as f:
                    yield info, f
        return
    with tarfile.open(source, "r:*") as archive:
        for info in archive:
            if info.isfile():
                yield info, archive.extractfile(info)
            elif info.isdir() or info.issym():
                yield info, None


def trim(source: Path, target: Path, *, limit_mib: float = LIMIT_MIB) -> tuple[int, int]:
    """Write the trimmed archive; returns (members kept, members dropped)."""
    kept = skipped = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz", compresslevel=9) as out:
        for info, data in _members(source):
            parts = PurePosixPath(info.name).parts
            if len(parts) > 1 and dropped(PurePosixPath(*parts[1:])):
                skipped += 1
                continue
            out.addfile(info, data)
            kept += 1
    size = target.stat().st_size
    if size > limit_mib * 2**20:
        target.unlink()
        raise SystemExit(f"the trimmed archive has {size / 2**20:.1f} MiB, over the {limit_mib} MiB limit")
    return kept, skipped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="llama_cpp_python-<version>.tar.gz or its unpacked directory")
    parser.add_argument("target", type=Path, help="the trimmed .tar.gz to write")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = parser.parse_args(argv)
    if not args.source.exists():
        sys.exit(f"{args.source} does not exist")
    kept, skipped = trim(args.source, args.target, limit_mib=args.limit_mib)
    size = args.target.stat().st_size / 2**20
    print(f"wrote {args.target}: {kept} entries kept, {skipped} left out, {size:.1f} MiB")


if __name__ == "__main__":
    main()
