"""`StoragePath`: a file or directory of run storage, on a local (or NFS) disk or on an object store
(`s3://bucket/prefix`, `gs://bucket/prefix`), with the part of pathlib's API the run layout needs.

Object stores are reached through `pyarrow.fs`, the layer Ray Tune itself stores through, so a run's
records and Tune's experiment share one set of credentials: the standard environment of each process
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`; Google's default
credentials for gs://), never the job spec. Local paths keep pathlib's own behaviour.

Atomic writes: locally a temp file renamed over the target (`peft_search.atomic`); on an object
store the whole content is in memory before the one put that creates the object, and a put is
atomic (a reader sees the old object or the new one). A directory on an object store is only a key
prefix: it exists once a file under it does.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from peft_search.atomic import write_atomic
from peft_search.errors import InputError

OBJECT_STORE_SCHEMES = ("s3", "gs")


def is_object_store(location: str | os.PathLike) -> bool:
    return str(location).split("://", 1)[0] in OBJECT_STORE_SCHEMES and "://" in str(location)


def split_uri(location: str, field: str = "storage") -> tuple[str, str]:
    """`(scheme, "bucket/prefix")` of an object-store URI; InputError naming `field` otherwise."""
    scheme, _, rest = location.partition("://")
    key = rest.rstrip("/")
    if scheme not in OBJECT_STORE_SCHEMES or not key or key.startswith("/") or "?" in key:
        raise InputError(field, f"{location!r}: give a local or shared (NFS) directory, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    return scheme, key


class StoragePath:
    """A local path (`local` is its pathlib.Path) or an object-store key (`scheme`, `key`; the
    pyarrow filesystem is made on first use, from the environment of the process using it)."""

    def __init__(self, local: Path | None = None, scheme: str | None = None, key: str | None = None, filesystem=None):
        self.local, self.scheme, self.key, self._filesystem = local, scheme, key, filesystem

    @classmethod
    def parse(cls, location: "str | os.PathLike | StoragePath", field: str = "storage") -> "StoragePath":
        """A local path (`~` expanded, made absolute; `file://` accepted) or an `s3://` / `gs://` URI."""
        if isinstance(location, StoragePath):
            return location
        text = str(location)
        if "://" not in text or text.startswith("file://"):
            return cls(local=Path(text.removeprefix("file://")).expanduser().resolve())
        scheme, key = split_uri(text, field)
        return cls(scheme=scheme, key=key)

    @property
    def filesystem(self):
        if self._filesystem is None:
            from pyarrow import fs

            self._filesystem, _ = fs.FileSystem.from_uri(f"{self.scheme}://{self.bucket}")
        return self._filesystem

    # ---- names ------------------------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def bucket(self) -> str | None:
        return None if self.is_local else self.key.split("/", 1)[0]

    def _with_key(self, key: str) -> "StoragePath":
        return StoragePath(scheme=self.scheme, key=key, filesystem=self._filesystem)

    def __truediv__(self, part: str | os.PathLike) -> "StoragePath":
        if self.is_local:
            return StoragePath(local=self.local / part)
        return self._with_key(f"{self.key}/{str(part).strip('/')}")

    @property
    def name(self) -> str:
        return self.local.name if self.is_local else PurePosixPath(self.key).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> "StoragePath":
        if self.is_local:
            return StoragePath(local=self.local.parent)
        return self._with_key(str(PurePosixPath(self.key).parent))

    def with_suffix(self, suffix: str) -> "StoragePath":
        return self.parent / PurePosixPath(self.name).with_suffix(suffix).name

    def __str__(self) -> str:
        return str(self.local) if self.is_local else f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"StoragePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        if isinstance(other, Path):  # a local StoragePath equals the pathlib path it wraps
            return self.local == other
        return isinstance(other, StoragePath) and str(self) == str(other)

    def __fspath__(self) -> str:
        """Local paths work wherever the standard library takes a path; an object-store key does not."""
        if not self.is_local:
            raise TypeError(f"{self} is on an object store, not a local path")
        return str(self.local)

    def as_uri(self) -> str:
        return self.local.as_uri() if self.is_local else str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    # ---- reading ----------------------------------------------------------------------------------------

    def _type(self):
        from pyarrow import fs

        return self.filesystem.get_file_info(self.key).type, fs.FileType

    def is_file(self) -> bool:
        if self.is_local:
            return self.local.is_file()
        kind, types = self._type()
        return kind == types.File

    def is_dir(self) -> bool:
        if self.is_local:
            return self.local.is_dir()
        kind, types = self._type()
        return kind == types.Directory

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def read_bytes(self) -> bytes:
        if self.is_local:
            return self.local.read_bytes()
        try:
            with self.filesystem.open_input_stream(self.key) as stream:
                return stream.read()
        except FileNotFoundError:
            raise FileNotFoundError(str(self)) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def iterdir(self) -> list["StoragePath"]:
        if self.is_local:
            return sorted(StoragePath(local=p) for p in self.local.iterdir())
        from pyarrow import fs

        infos = self.filesystem.get_file_info(fs.FileSelector(self.key, allow_not_found=True))
        return sorted(self._with_key(info.path.rstrip("/")) for info in infos)

    def glob(self, pattern: str) -> list["StoragePath"]:
        """Files and directories matching `pattern` (segments with `*`, `?`, `[...]`; no `**`)."""
        if self.is_local:
            return sorted(StoragePath(local=p) for p in self.local.glob(pattern))
        found = [self]
        for segment in pattern.split("/"):
            if not any(c in segment for c in "*?["):
                found = [p / segment for p in found]
                continue
            found = [child for p in found for child in p.iterdir() if fnmatch.fnmatchcase(child.name, segment)]
        return sorted(p for p in found if p.exists())

    def __lt__(self, other: "StoragePath") -> bool:
        return str(self) < str(other)

    # ---- writing ----------------------------------------------------------------------------------------

    def write_bytes(self, data: bytes) -> None:
        """Atomic: a reader sees the previous file (or none) or all of `data`."""
        if self.is_local:
            write_atomic(self.local, data)
            return
        with self.filesystem.open_output_stream(self.key) as stream:  # the one put happens at close
            stream.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        if self.is_local:
            self.local.mkdir(parents=parents, exist_ok=exist_ok)
        elif not exist_ok and self.exists():
            raise FileExistsError(str(self))
        # On an object store a directory is a key prefix: nothing to create.

    def unlink(self, missing_ok: bool = False) -> None:
        if self.is_local:
            self.local.unlink(missing_ok=missing_ok)
            return
        try:
            self.filesystem.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    # ---- whole directories (trained weights, the report) --------------------------------------------

    def remove_tree(self) -> None:
        """Delete this directory and everything under it (nothing when it does not exist)."""
        if self.is_local:
            if self.local.exists():
                shutil.rmtree(self.local)
        elif self.is_dir():
            self.filesystem.delete_dir(self.key)

    def upload(self, local_dir: str | os.PathLike) -> None:
        """Copy a local directory's files to this directory (each file one atomic write)."""
        for file in sorted(Path(local_dir).rglob("*")):
            if file.is_file():
                (self / file.relative_to(local_dir).as_posix()).write_bytes(file.read_bytes())

    def download(self, local_dir: str | os.PathLike) -> Path:
        """Copy this directory's files to `local_dir` (created); returns it."""
        target = Path(local_dir)
        if self.is_local:
            shutil.copytree(self.local, target, dirs_exist_ok=True)
            return target
        from pyarrow import fs

        for info in self.filesystem.get_file_info(fs.FileSelector(self.key, recursive=True)):
            if info.type == fs.FileType.File:
                destination = target / info.path[len(self.key) + 1 :]
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(self._with_key(info.path).read_bytes())
        return target

    def arrow(self) -> tuple:
        """`(filesystem, path)` for pyarrow's readers and writers (`filesystem` None when local)."""
        return (None, str(self.local)) if self.is_local else (self.filesystem, self.key)


class LocalStaging:
    """A local directory for what a library can only write to disk (trained weights, the report's
    files), copied to `target` on a clean exit; for a local target it is the target itself."""

    def __init__(self, target: StoragePath):
        self.target = target
        self._temporary: str | None = None

    def __enter__(self) -> Path:
        if self.target.is_local:
            self.target.local.mkdir(parents=True, exist_ok=True)
            return self.target.local
        self._temporary = tempfile.mkdtemp(prefix="peft-search-")
        return Path(self._temporary)

    def __exit__(self, kind, value, traceback) -> None:
        if self._temporary is None:
            return
        try:
            if kind is None:
                self.target.upload(self._temporary)
        finally:
            shutil.rmtree(self._temporary, ignore_errors=True)
