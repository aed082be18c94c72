"""A read-only, confined view of one folder tree, for the AutoExplore environment.

The agent names things only by the **display names** of entries of its current folder (plus
``..``); this module turns those into file-system operations that can never leave ``root``, never
block, never modify anything and never read more than a fixed number of bytes:

* **Confinement.** A folder is a tuple of entry names below ``root``. Every operation opens
  ``root`` and walks the names one by one with ``os.open(name, O_DIRECTORY | O_NOFOLLOW,
  dir_fd=parent)``, so ``..``, absolute paths and symbolic links are never followed (a symlink
  swapped in for a folder between two steps fails the walk instead of escaping). Names come from
  ``os.scandir`` of the folder itself, so they never contain ``/``. Symbolic links are listed
  (marked ``@``) but are never opened, inside the tree or out of it. No ``os.chdir`` anywhere.
* **Special files** (FIFOs, sockets, devices) are listed with a marker and never opened: a file is
  opened only after ``lstat`` says it is regular, with ``O_NONBLOCK | O_NOFOLLOW | O_NOCTTY``, and
  the opened descriptor is checked again with ``fstat`` (same inode, still regular) before any
  read, so a FIFO swapped in meanwhile cannot block the step.
* **Bounded reads.** At most ``max_read_bytes`` are read from a file whatever its size (a sparse
  1 GB file costs the same as a 1 kB one); a NUL byte marks a file as binary; unreadable files are
  reported, never raised.
* **Escaped names.** :func:`display_name` maps every raw name (any bytes but ``/`` and NUL)
  injectively onto printable ASCII without spaces: backslash, whitespace, control characters,
  non-ASCII characters and undecodable bytes become escapes, so a name cannot forge a line of the
  prompt or of the action list, and each display name maps back to exactly one entry.
* **Read-only.** Files and folders are opened ``O_RDONLY`` (with ``O_NOATIME`` where allowed).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

# Kinds of listed entries and their listing markers (like ``ls -F``).
DIR, FILE, SYMLINK, FIFO, SOCKET, DEVICE, OTHER = "dir", "file", "symlink", "fifo", "socket", "device", "other"
KIND_MARKERS: dict[str, str] = {DIR: "/", FILE: "", SYMLINK: "@", FIFO: "|", SOCKET: "=", DEVICE: "#", OTHER: "?"}
"""Suffix shown after a display name in a listing, per kind."""
_MARKER_CHARS = frozenset("".join(KIND_MARKERS.values()))

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)


class SandboxError(Exception):
    """An operation the sandbox refuses or cannot do; the message is shown to the agent."""


def display_name(name: str) -> str:
    """The printable, space-free, injective display form of a raw entry name.

    ``name`` is a ``str`` as ``os.scandir`` returns it (undecodable bytes as surrogate escapes).
    Printable ASCII other than backslash and space stays as is; backslash becomes ``\\\\``;
    undecodable bytes and ASCII space/control characters become ``\\xNN``; any non-ASCII character
    becomes ``\\uNNNN`` or ``\\UNNNNNNNN`` (so a raw byte and a character never look alike).
    A trailing listing marker character (``/@|=#?``) is escaped too, so ``a@``
    (a file) and ``a`` (a symlink, listed ``a@``) stay distinguishable in a listing.
    """
    out: list[str] = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0x21 <= code <= 0x7E:
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x80:  # ASCII space and control characters
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:  # a decoded non-ASCII character (never \\x: those are raw bytes)
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    if out and out[-1] in _MARKER_CHARS:
        out[-1] = f"\\x{ord(out[-1]):02x}"
    return "".join(out)


@dataclass(frozen=True)
class Entry:
    """One entry of a listed folder."""

    name: str
    """Raw name (``os.scandir``'s ``str``, surrogate-escaped)."""
    display: str
    """:func:`display_name` of ``name``: what the agent sees and types."""
    kind: str
    """One of ``dir``, ``file``, ``symlink``, ``fifo``, ``socket``, ``device``, ``other``."""

    @property
    def listed(self) -> str:
        """The display name with its kind marker, as shown in a listing."""
        return self.display + KIND_MARKERS[self.kind]


@dataclass(frozen=True)
class FileView:
    """The outcome of reading a file for display."""

    status: str
    """``text``, ``binary``, ``empty`` or ``error``."""
    text: str = ""
    """The decoded prefix (``text``) or the error message (``error``)."""
    size: int = 0
    """Size in bytes (from ``fstat``)."""
    truncated: bool = False
    """True when only a prefix of the file was read."""


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISSOCK(mode):
        return SOCKET
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return DEVICE
    return OTHER


def _reason(error: OSError) -> str:
    """A short, path-free reason for an OSError (paths outside the view must not leak)."""
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno in (errno.ELOOP, errno.EMLINK):
        return "is a symbolic link"
    if error.errno == errno.ENOTDIR:
        return "not a directory"
    if error.errno == errno.ENOENT:
        return "no such file or directory"
    return (os.strerror(error.errno) if error.errno else "unreadable").lower()


class Sandbox:
    """Read-only access to the tree under ``root`` by entry names; see the module docstring.

    Args:
        root: Folder to confine to (must exist; symbolic links in the path *to* it are resolved
            once here, nothing below it is ever followed).
        hidden: ``fnmatch`` patterns of names never listed nor accessible (e.g. ``__pycache__``).
        visible_files: If given, only regular files matching one of these patterns are listed or
            accessible (folders, links and special files are not filtered by it).
        max_read_bytes: Most bytes read from one file.
        max_entries: Most entries scanned in one folder, hidden ones included (a folder with
            millions of entries costs bounded time; the rest is reported as left out).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        hidden: Sequence[str] = (),
        visible_files: Sequence[str] | None = None,
        max_read_bytes: int = 16384,
        max_entries: int = 2000,
    ) -> None:
        path = os.fspath(root)
        if not os.path.isdir(path):
            raise ValueError(f"AutoExplore root {path!r} is not an existing folder")
        if max_read_bytes < 1 or max_entries < 1:
            raise ValueError(f"max_read_bytes and max_entries must be >= 1, got {max_read_bytes}, {max_entries}")
        self.root = os.path.realpath(path)
        self.hidden = tuple(hidden)
        self.visible_files = None if visible_files is None else tuple(visible_files)
        self.max_read_bytes = int(max_read_bytes)
        self.max_entries = int(max_entries)

    def __repr__(self) -> str:
        return f"Sandbox({self.root!r})"

    # -------------------------------------------------------------------------- walking
    @contextmanager
    def _open_dir(self, folder: Sequence[str]) -> Iterator[int]:
        """A descriptor of ``root/folder``, walked name by name without following any link."""
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as error:  # the root was removed or replaced (by a link) after construction
            raise SandboxError(f"cannot open the repository root: {_reason(error)}") from None
        try:
            for name in folder:
                self._check_name(name)
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as error:
                    raise SandboxError(f"cannot enter {display_name(name)}: {_reason(error)}") from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _check_name(self, name: str) -> None:
        # Defence in depth: callers only pass names that a listing produced.
        if not name or name in (".", "..") or "/" in name or "\x00" in name:
            raise SandboxError(f"invalid name {display_name(name)!r}")

    def _is_hidden(self, name: str, kind: str) -> bool:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.hidden):
            return True
        if kind == FILE and self.visible_files is not None:
            return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.visible_files)
        return False

    # -------------------------------------------------------------------------- listing
    def list_dir(self, folder: Sequence[str]) -> tuple[list[Entry], int]:
        """Entries of ``root/folder`` sorted by display name, and how many were left unscanned.

        Raises SandboxError when the folder cannot be opened or read.
        """
        entries: list[Entry] = []
        left_out = 0
        with self._open_dir(folder) as fd:
            try:
                with os.scandir(fd) as scan:
                    scanned = 0
                    for item in scan:
                        # Hidden and filtered entries count too: each one costs an lstat, so a
                        # folder of a million hidden files must not cost a million of them.
                        if scanned >= self.max_entries:
                            left_out += 1
                            if left_out >= self.max_entries:  # bounded time: stop counting
                                break
                            continue
                        scanned += 1
                        try:
                            # lstat through the folder descriptor: never follows a link.
                            mode = os.stat(item.name, dir_fd=fd, follow_symlinks=False).st_mode
                        except OSError:
                            mode = 0  # vanished or unreadable: listed as "other"
                        kind = _kind_of(mode)
                        if not self._is_hidden(item.name, kind):
                            entries.append(Entry(item.name, display_name(item.name), kind))
            except OSError as error:
                raise SandboxError(f"cannot list folder: {_reason(error)}") from None
        entries.sort(key=lambda entry: entry.display)
        return entries, left_out

    # -------------------------------------------------------------------------- reading
    def read_file(self, folder: Sequence[str], name: str) -> FileView:
        """Read at most ``max_read_bytes`` of the regular file ``root/folder/name``.

        Never raises for a file-system problem: errors come back as ``FileView("error", ...)``.
        """
        try:
            with self._open_dir(folder) as dir_fd:
                self._check_name(name)
                before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                kind = _kind_of(before.st_mode)
                if kind != FILE:
                    return FileView("error", f"not a regular file ({kind}), not opened")
                fd = self._open_file(name, dir_fd)
                try:
                    after = os.fstat(fd)
                    # The entry may have been swapped (e.g. for a FIFO) between lstat and open.
                    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                        return FileView("error", "changed while opening, not read")
                    data = self._read_prefix(fd)
                finally:
                    os.close(fd)
        except SandboxError as error:
            return FileView("error", str(error))
        except OSError as error:
            return FileView("error", _reason(error))
        size = int(after.st_size)
        truncated = size > len(data)
        if not data:
            return FileView("empty", "", size, truncated)
        if b"\x00" in data:
            return FileView("binary", "", size, truncated)
        return FileView("text", data.decode("utf-8", errors="replace"), size, truncated)

    def _open_file(self, name: str, dir_fd: int) -> int:
        if _NOATIME:
            try:
                return os.open(name, _FILE_FLAGS | _NOATIME, dir_fd=dir_fd)
            except PermissionError:
                pass  # O_NOATIME needs file ownership; fall back to a plain read-only open
        return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)

    def _read_prefix(self, fd: int) -> bytes:
        chunks: list[bytes] = []
        remaining = self.max_read_bytes
        while remaining > 0:
            try:
                chunk = os.read(fd, min(remaining, 65536))
            except BlockingIOError:
                break  # cannot happen for a regular file; never wait regardless
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def entry_kind(self, folder: Sequence[str], name: str) -> str | None:
        """The kind of ``root/folder/name`` (``lstat``), None when it does not exist."""
        try:
            with self._open_dir(folder) as dir_fd:
                self._check_name(name)
                return _kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except (OSError, SandboxError):
            return None
