"""Every file and directory sjd-jax writes goes through here: nothing half-written, nothing followed.

* ``write_file(path, write)``: ``write(f)`` fills an exclusive temp file created in ``path``'s own
  directory (``O_CREAT | O_EXCL | O_NOFOLLOW``, so a planted symlink or file at a temp name is
  never opened: the name is skipped), which is flushed, fsynced and renamed onto ``path``. The rename
  replaces ``path`` itself: a symlink there is replaced, its target is never written.
* ``directory(path, replace=..., owned=...)``: a context manager yielding an exclusive temp
  directory next to ``path``; on success its files are fsynced and it takes ``path``'s place. An
  existing ``path`` is replaced only when asked to and only if it is empty or ``owned(path)`` says
  the package wrote it; anything else is refused before any work, with nothing touched. The swap
  is one ``renameat2(RENAME_EXCHANGE)`` where the kernel has it, so a kill at any moment leaves
  the old or the new directory at ``path``; elsewhere the old one is first renamed aside, and a
  later run puts it back if the process died between the two renames.
* Temp names carry the host and pid: ``.NAME.tmp-HOST-PID-XXXXXXXX`` (``.NAME.old-...`` for a
  directory being replaced). The first write into a directory removes the temps of dead
  processes of this host there (``sweep``), so a killed run leaves nothing behind for long.
* ``check_file_target`` / ``check_dir_target``: fail before the work when the result could not be
  written (probe file in the target directory: permission bits lie to root).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"
# (a suffix: what a library writing inside the temp's name made of it, e.g. orbax's own temp)
_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?P<what>tmp|old)-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[A-Za-z0-9_]+(?:\..+)?$")
# written by sjd-jax before this module (convert, streaming, PNGs): ".NAME.tmp-PID"
_LEGACY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_swept: set[str] = set()


def temp_prefix(name: str, what: str = "tmp") -> str:
    return f".{name}.{what}-{_HOST}-{os.getpid()}-"


def _token() -> str:
    return secrets.token_hex(4)


def _open_new(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def _fresh(parent: Path, name: str, what: str, make):
    """``(path, make(path))`` for the first free temp name; ``make`` must fail with
    ``FileExistsError`` on a taken one (``O_CREAT | O_EXCL | O_NOFOLLOW``, ``mkdir``): nothing
    already there, a planted file or symlink included, is ever opened or followed."""
    for _ in range(100):
        path = parent / (temp_prefix(name, what) + _token())
        try:
            return path, make(path)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / name))


def exclusive_temp(parent: Path, name: str, what: str = "tmp", directory: bool = False) -> Path:
    """A new temp file (empty, mode 0600) or directory (0700) in ``parent`` (see ``_fresh``)."""
    if directory:
        return _fresh(Path(parent), name, what, lambda p: os.mkdir(p, 0o700))[0]
    path, fd = _fresh(Path(parent), name, what, _open_new)
    os.close(fd)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep(parent, force: bool = False) -> list[str]:
    """Remove the temps in ``parent`` left by dead processes of this host (once per directory and
    process unless ``force``); a directory renamed aside by a replacement that died before putting
    the new one in place is moved back. Returns the names handled."""
    parent = Path(parent)
    key = str(parent.absolute())
    if key in _swept and not force:
        return []
    _swept.add(key)
    done = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for e in entries:
        m = _TEMP.match(e.name)
        if m is not None and (m["host"] != _HOST or _pid_alive(int(m["pid"]))):
            continue
        if m is None:
            m = _LEGACY.match(e.name)
            if m is None or _pid_alive(int(m["pid"])):
                continue
        path = Path(e.path)
        target = parent / m["name"]
        if m.groupdict().get("what") == "old":  # a replacement died between its two renames
            if os.path.lexists(target):
                continue  # a newer one took the name meanwhile: keep this copy, remove nothing
            try:
                os.rename(path, target)
            except OSError:
                continue  # never delete the only copy of a checkpoint
        else:
            _remove(path)
        done.append(e.name)
    return done


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            _fsync(Path(dirpath) / f)
        _fsync(Path(dirpath), directory=True)


def write_file(path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through an exclusive temp file in its directory (see the module docstring)."""
    path = Path(path)
    parent = path.absolute().parent
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    sweep(parent)
    tmp, fd = _fresh(parent, path.name, "tmp", _open_new)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # created 0600; the result gets the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync(parent, directory=True)
    return path


def write_bytes(path, data: bytes) -> Path:
    return write_file(path, lambda f: f.write(data))


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path, obj, **kw) -> Path:
    kw.setdefault("indent", 1)
    return write_text(path, json.dumps(obj, **kw))


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False  # filesystem or kernel without the flag
    raise OSError(err, os.strerror(err), str(b))


def _is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def check_dir_target(path, replace: bool, owned: Callable[[Path], bool], what: str = "sjd-jax output") -> Path:
    """Refuse (ValueError, nothing touched) a directory target that must not be written or replaced:
    ``path`` exists and ``replace`` is off; or it is a symlink, not a directory, or a non-empty
    directory that ``owned`` does not claim. Then probe that its parent can take new entries
    (the nearest existing ancestor, when the parent does not exist yet)."""
    path = Path(path).absolute()
    if os.path.lexists(path):
        if not replace:
            raise ValueError(f"{path} exists; pass --force (force=True) to replace it")
        if path.is_symlink() or not path.is_dir():
            raise ValueError(f"{path} is not a directory (a file or a symlink): --force replaces only an "
                             f"{what} directory; nothing touched")
        if not (_is_empty_dir(path) or owned(path)):
            raise ValueError(f"{path} is not an {what} and not empty: --force replaces only what sjd-jax "
                             f"wrote; nothing touched")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    _probe(parent, path)
    return path


def check_file_target(path) -> Path:
    """Fail before any work if ``path`` cannot be written as a file."""
    path = Path(path)
    parent = path.absolute().parent
    if path.is_dir() and not path.is_symlink():
        raise ValueError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise ValueError(f"cannot write {path}: {parent} is not an existing directory")
    _probe(parent, path)
    return path


def _probe(parent: Path, path: Path) -> None:
    if not parent.is_dir():
        raise ValueError(f"cannot write {path}: {parent} is not a directory")
    try:
        os.unlink(exclusive_temp(parent, path.name))
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror}") from e


@contextlib.contextmanager
def directory(path, *, replace: bool = False, owned: Callable[[Path], bool] = lambda p: False,
              what: str = "sjd-jax output") -> Iterator[Path]:
    """Build a directory in an exclusive temp sibling of ``path``; it takes ``path``'s place when
    the ``with`` block ends without an error (see the module docstring). On an error the temp is
    removed and ``path`` is untouched."""
    path = check_dir_target(path, replace, owned, what)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent)
    tmp = exclusive_temp(parent, path.name, directory=True)
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        _fsync_tree(tmp)
        if os.path.lexists(path):
            check_dir_target(path, replace, owned, what)  # again: it may have changed meanwhile
            if _rename_exchange(tmp, path):
                pass  # tmp now holds the old directory, removed below
            else:
                old = exclusive_temp(parent, path.name, "old", directory=True)
                os.rename(path, old)  # (replaces the empty placeholder) ... a kill here: sweep restores it
                try:
                    os.rename(tmp, path)
                except OSError:
                    os.rename(old, path)  # the old one back in place
                    raise
                tmp = old
        else:
            os.rename(tmp, path)
            tmp = None
        _fsync(parent, directory=True)
    except BaseException:
        if tmp is not None:
            _remove_settled(tmp)
            tmp = None
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_settled(tmp: Path, seconds: float = 3.0) -> None:
    """Remove a failed write's temp directory. A library that failed mid-write (orbax after ENOSPC)
    may still have writer threads finishing into it, re-creating entries after a first rmtree:
    remove until it stays gone for a moment (at most ``seconds``)."""
    import time

    _FAILED.add(tmp)
    deadline = time.monotonic() + seconds
    while True:
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(0.05)
        if not os.path.lexists(tmp) or time.monotonic() > deadline:
            return


# Failed writes' temp directories, removed once more at exit: on a loaded machine a writer thread
# may outlive the settle time above, and the interpreter joins such threads before atexit runs.
_FAILED: set[Path] = set()


@atexit.register
def _remove_failed_again() -> None:
    for tmp in _FAILED:
        shutil.rmtree(tmp, ignore_errors=True)
