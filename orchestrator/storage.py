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


def create_exclusive(uri: str, text: str) -> bool:
    """Create the file with ``text`` unless it exists; False if it did. On local disks the
    file appears whole and only once however many processes race for it (written beside, then
    hard-linked into place: link fails if the name exists). Remote stores have no such
    primitive: there it is a check, then a write."""
    fs, path = _resolve(uri)
    if fs is not None:
        if read_text(uri) is not None:
            return False
        write_text(uri, text)
        return True
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


class DriverLock:
    """An exclusive lock on a sweep folder for the life of the driver process (``flock``: the
    kernel releases it when the process dies, however it dies, so a restarted job is never
    locked out by a dead driver). Remote storage has no lock: one driver per sweep is then the
    operator's promise (k8s/: one RayJob per sweep name)."""

    FILE = "driver.lock"

    def __init__(self, sweep_dir: str) -> None:
        self.sweep_dir, self._fd = sweep_dir, None

    def acquire(self) -> str | None:
        """None if this process now holds the lock, else who holds it (the holder's line)."""
        fs, folder = _resolve(self.sweep_dir)
        if fs is not None:
            return None
        import fcntl
        import os
        import socket

        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / self.FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return holder
        except OSError as e:  # a file system without locks (some NFS mounts): run unlocked, and say so
            import sys

            print(f"[storage] no lock on {folder / self.FILE} ({e}); one driver per sweep is up to you",
                  file=sys.stderr, flush=True)  # fmt: skip
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            import os

            os.close(self._fd)
            self._fd = None
