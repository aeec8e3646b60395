"""Small text files in the sweep folder, which may be local or any pyarrow URI (s3://...).

Ray Tune already writes its results through pyarrow filesystems; the sweep keeps its own
``sweep.json`` next to them the same way, so ``--resume NAME`` works on whatever storage the
sweep ran on.
"""

from __future__ import annotations

from pathlib import Path


def _resolve(uri: str):
    """(filesystem, path) for a pyarrow URI, or (None, Path) for a local path."""
    if "://" in uri and not uri.startswith("file://"):
        import pyarrow.fs  # late: only remote storage needs it

        return pyarrow.fs.FileSystem.from_uri(uri)
    return None, Path(uri.removeprefix("file://"))


def read_text(uri: str) -> str | None:
    """The file's text, or None if it does not exist."""
    fs, path = _resolve(uri)
    if fs is None:
        return path.read_text() if path.is_file() else None
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(uri: str, text: str) -> None:
    """Write atomically on local disks (temp file + rename) so a kill never leaves half a file."""
    fs, path = _resolve(uri)
    if fs is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return
    fs.create_dir(str(path).rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())
