"""The file datastore: one file per dataset under the repository root.

Paths come from file templates (`FileTemplates`), file formats from formatters (`FormatterFactory`).
Files are written to a temporary name in the destination directory and renamed, so a reader never
sees a partial file; a killed write leaves only a ``.{name}.tmp-{hex}`` file (`temp_files`).  The
datastore keeps no state of its own: `put` and `ingest` return a `StoredFileInfo` for the caller (the
registry) to record, and `get` reads with that record.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .datasets import DatasetRef, DatasetType, StorageClassFactory
from .errors import (
    ButlerError,
    CorruptDatasetError,
    DatastoreError,
    FileTemplateError,
    FormatterError,
    did_you_mean,
)
from .file_templates import FileTemplates
from .formatters import BytesFormatter, Formatter, FormatterFactory
from .locks import LOCK_DIRECTORY

__all__ = [
    "INLINE_PATH","TRANSFER_MODES", "FileDatastore", "StoredFileInfo"]

TRANSFER_MODES = ("copy", "move", "hardlink", "symlink", "direct", "auto")
# Top-level files of a repository that are not datasets (see `FileDatastore.walk_files`).
REPOSITORY_FILES = frozenset(
    {"butler.yaml", "dimensions.yaml", "storage_classes.yaml", "formatters.yaml", "gen3.sqlite3"}
)
# Top-level directories of a repository that hold no datasets: `Butler.verify`'s quarantine, the Parsl
# executor's run files and the run locks (`butler.locks`).
SERVICE_DIRECTORIES = frozenset({".quarantine", ".parsl", LOCK_DIRECTORY})
_DATABASE_FILE_RE = re.compile(r"\.(sqlite3?|db)(-wal|-shm|-journal)?$")
_TEMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")
_CONFIG_KEYS = ("checksum", "verify_on_get", "templates", "inline_storage_classes")
#: The ``path`` of datasets whose bytes are kept in the registry instead of a file.
INLINE_PATH = ":inline:"
_COMPRESSION_SUFFIXES = frozenset({".gz", ".fz", ".bz2", ".xz", ".zst"})
_NAME_MAX = 255  # bytes in one file or directory name (Linux, macOS)
_PATH_MAX = 4096  # bytes in a whole path, with its terminating NUL (Linux)
_TEMP_EXTRA = len("." + ".tmp-") + 32  # what a temporary name adds to the file name (`_TEMP_RE`)


@dataclass(frozen=True)
class StoredFileInfo:
    """The datastore record of one dataset's file.

    Attributes
    ----------
    dataset_id : `uuid.UUID`
        The dataset's ID.
    path : `str`
        POSIX path relative to the repository root; an absolute path for a file ingested with
        ``transfer="direct"`` from outside the root (the repository does not own it).
    formatter : `str`
        Dotted path of the formatter class that reads the file.
    storage_class : `str`
        Name of the storage class of the dataset.
    checksum : `str` or None
        ``"sha256:<hex>"``, or None when checksums were off.
    file_size : `int`
        Size of the file in bytes.
    """

    dataset_id: uuid.UUID
    path: str
    formatter: str
    storage_class: str
    checksum: str | None
    file_size: int
    inline: bytes | None = field(default=None, repr=False, compare=False)

    def to_record(self) -> dict[str, Any]:
        """The registry row of this record (``datastore_record`` columns, plus ``inline`` bytes)."""
        return {
            "dataset_id": self.dataset_id,
            "path": self.path,
            "formatter": self.formatter,
            "storage_class": self.storage_class,
            "checksum": self.checksum,
            "file_size": self.file_size,
            "inline": self.inline,
        }

    @property
    def is_inline(self) -> bool:
        """Whether the dataset is stored in the registry (``inline`` bytes) rather than in a file."""
        return self.path == INLINE_PATH

    def to_simple(self) -> dict[str, Any]:
        """Return a JSON-safe dictionary (the inverse of `from_simple`); inline bytes as base64."""
        simple = {
            "dataset_id": str(self.dataset_id),
            "path": self.path,
            "formatter": self.formatter,
            "storage_class": self.storage_class,
            "checksum": self.checksum,
            "file_size": self.file_size,
        }
        if self.inline is not None:
            simple["inline"] = base64.b64encode(self.inline).decode("ascii")
        return simple

    @classmethod
    def from_simple(cls, simple: Mapping[str, Any]) -> StoredFileInfo:
        """Make a record from the output of `to_simple`."""
        return cls(
            dataset_id=uuid.UUID(str(simple["dataset_id"])),
            path=str(simple["path"]),
            formatter=str(simple["formatter"]),
            storage_class=str(simple["storage_class"]),
            checksum=simple.get("checksum"),
            file_size=int(simple["file_size"]),
            inline=base64.b64decode(simple["inline"]) if simple.get("inline") is not None else None,
        )

    @property
    def is_external(self) -> bool:
        """Whether the file lies outside the repository (an absolute ``path``)."""
        return PurePosixPath(self.path).is_absolute()


def _write_bytes(path: Path, data: bytes) -> None:
    """Write a new file with one system call (the name must not exist)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class FileDatastore:
    """Stores each dataset as one file under a root directory.

    Parameters
    ----------
    root : `str` or `pathlib.Path`
        The repository root; it need not exist yet.
    config : `Mapping`
        The ``datastore`` section of ``butler.yaml``: ``checksum`` (`bool`, default True: record a
        SHA-256 of each file), ``verify_on_get`` (`bool`, default True: check it on every `get`) and
        ``templates`` (file templates, see `FileTemplates`).
    storage_classes : `StorageClassFactory`
        The repository's storage classes.
    formatters_config : `Mapping` [`str`, `str`]
        The ``formatters`` mapping of ``formatters.yaml``.
    repository_files : iterable of `str`, optional
        More top-level file names that belong to the repository rather than to datasets (e.g. a
        SQLite database with a non-default name), excluded by `walk_files`.

    Attributes
    ----------
    root : `pathlib.Path`
        Absolute, resolved root.
    templates : `FileTemplates`
    formatters : `FormatterFactory`

    Raises
    ------
    DatastoreError
        If the configuration has unknown keys, no templates, or non-boolean flags.
    FileTemplateError
        If a template is malformed or there is no ``default`` template.
    """

    def __init__(
        self,
        root: str | Path,
        config: Mapping[str, Any],
        storage_classes: StorageClassFactory,
        formatters_config: Mapping[str, str],
        *,
        repository_files: Iterable[str] = (),
    ):
        unknown = [k for k in config if k not in _CONFIG_KEYS]
        if unknown:
            raise DatastoreError(
                f"unknown key {unknown[0]!r} in the datastore section of butler.yaml. "
                f"{did_you_mean(str(unknown[0]), _CONFIG_KEYS)}"
            )
        if not isinstance(config.get("templates"), Mapping):
            raise DatastoreError("the datastore section of butler.yaml needs a 'templates' mapping (with a 'default').")
        for key in ("checksum", "verify_on_get"):
            if not isinstance(config.get(key, True), bool):
                raise DatastoreError(f"datastore.{key} in butler.yaml must be true or false, not {config[key]!r}.")
        self.root = Path(root).resolve()
        self.checksum: bool = config.get("checksum", True)
        self.verify_on_get: bool = config.get("verify_on_get", True)
        self.templates = FileTemplates(config["templates"])
        self.formatters = FormatterFactory(formatters_config, storage_classes)
        self._storage_classes = storage_classes
        self._repository_files = REPOSITORY_FILES | frozenset(repository_files)
        self.inline_storage_classes = frozenset(config.get("inline_storage_classes") or ())

    def __repr__(self) -> str:
        return f"FileDatastore({str(self.root)!r})"

    # Paths ------------------------------------------------------------------------------------------

    def validate_dataset_type(self, dataset_type: DatasetType) -> None:
        """Check that datasets of a type can be stored: a storage class, a template and a formatter.

        Raises
        ------
        StorageClassError
            If the storage class is not defined.
        FileTemplateError
            If its file template would not give each dataset its own path.
        FormatterError
            If no usable formatter is configured for it.
        """
        self._storage_classes[dataset_type.storage_class]
        self.templates.get(dataset_type).validate(dataset_type)
        self.formatters.get_class(dataset_type)

    def predict_path(self, ref: DatasetRef) -> str:
        """Return the path (relative to the root, with extension) `put` would write a dataset to.

        Raises
        ------
        FileTemplateError
            If the template cannot be rendered for this dataset.
        FormatterError
            If no formatter is configured for its dataset type.
        """
        return self.templates.get(ref.dataset_type).format(ref) + self.formatters.get_class(ref.dataset_type).extension

    def abspath(self, info: StoredFileInfo) -> Path:
        """Return the absolute path of a dataset's file.

        Raises
        ------
        DatastoreError
            If a relative recorded path has a ``..`` segment (a damaged record).
        """
        path = PurePosixPath(info.path)
        if path.is_absolute():
            return Path(info.path)
        if ".." in path.parts:
            raise DatastoreError(
                f"the record of dataset {info.dataset_id} has path {info.path!r}, which leaves the repository."
            )
        return self.root / info.path

    # Writing ----------------------------------------------------------------------------------------

    def put(self, obj: Any, ref: DatasetRef, *, clobber: bool = False) -> StoredFileInfo:
        """Write a dataset's file (the registry is not touched).

        Parameters
        ----------
        obj : `object`
            An instance of the dataset type's storage class's Python type.
        ref : `DatasetRef`
            The dataset; its data ID must know every value the file template needs.
        clobber : `bool`, optional
            Replace a file already at the target path.  Only for a caller that knows no registered
            dataset owns it (an executor re-running a quantum whose earlier attempt was killed).

        Returns
        -------
        info : `StoredFileInfo`
            The record to store in the registry.

        Raises
        ------
        StorageClassError
            If ``obj`` is not of the storage class's type, or the storage class is not defined.
        FileTemplateError
            If the path cannot be rendered or would leave the root.
        DatastoreError
            If the file already exists, or ``ref`` is a component.
        FormatterError
            If the formatter cannot write ``obj``.  No file (or temporary file) is left behind.
        """
        dataset_type = ref.dataset_type
        if dataset_type.component:
            raise DatastoreError(
                f"cannot put component dataset type {dataset_type.name!r}; put the whole "
                f"{dataset_type.parent_name!r} dataset instead."
            )
        storage_class = self._storage_classes[dataset_type.storage_class]
        storage_class.validate(obj)
        formatter = self.formatters.get(dataset_type)
        dotted = self.formatters.dotted_name(type(formatter))

        def serialise(produce: Callable[[], Any]) -> Any:
            try:
                return produce()
            except ButlerError:
                raise
            except Exception as err:
                raise FormatterError(
                    f"{dotted} could not write dataset {dataset_type.name} {ref.data_id} (run {ref.run!r}): "
                    f"{type(err).__name__}: {err}"
                ) from err

        if isinstance(formatter, BytesFormatter) and storage_class.name in self.inline_storage_classes:
            data = serialise(lambda: formatter.to_bytes(obj))
            checksum = "sha256:" + hashlib.sha256(data).hexdigest() if self.checksum else None
            return StoredFileInfo(ref.id, INLINE_PATH, dotted, storage_class.name, checksum, len(data), inline=data)
        relative = self.templates.get(dataset_type).format(ref) + formatter.extension
        target = self._new_target(relative, ref, clobber=clobber)
        if isinstance(formatter, BytesFormatter):
            data = serialise(lambda: formatter.to_bytes(obj))
            size, checksum = self._write_new(target, lambda tmp: _write_bytes(tmp, data), data=data)
        else:
            size, checksum = self._write_new(target, lambda tmp: serialise(lambda: formatter.write(obj, tmp)))
        return StoredFileInfo(ref.id, relative, dotted, storage_class.name, checksum, size)

    def ingest(
        self,
        path: str | Path,
        ref: DatasetRef,
        *,
        transfer: str | None = "copy",
        formatter: str | None = None,
    ) -> StoredFileInfo:
        """Bring an existing file into the datastore as a dataset (the registry is not touched).

        Parameters
        ----------
        path : `str` or `pathlib.Path`
            The file.
        ref : `DatasetRef`
            The dataset it holds.
        transfer : `str` or None, optional
            ``"copy"``, ``"move"``, ``"hardlink"``, ``"symlink"`` (to the file's absolute path),
            ``"direct"`` (leave the file where it is and record its absolute path; the repository
            never deletes it) or ``"auto"`` (``"direct"`` for a file inside the root, else
            ``"copy"``); None means ``"direct"``.  A file already inside the root is always taken
            in place with ``"direct"``/``"auto"`` and recorded relative to the root (the repository
            then owns it).
        formatter : `str`, optional
            Dotted path of the formatter class that reads the file, overriding the dataset type's
            configured one; the stored file then keeps the source's extension (``.fits.fz``).

        Returns
        -------
        info : `StoredFileInfo`
            The record to store in the registry.

        Raises
        ------
        DatastoreError
            If the transfer mode is unknown, the source is not an existing file, the destination
            exists, or a hard link is impossible (another filesystem).
        FileTemplateError
            If the destination path cannot be rendered or would leave the root.
        FormatterError
            If the formatter cannot be imported.
        """
        mode = "direct" if transfer is None else transfer
        if mode not in TRANSFER_MODES:
            raise DatastoreError(
                f"unknown transfer mode {transfer!r}. {did_you_mean(str(transfer), TRANSFER_MODES)}"
            )
        source = Path(os.path.abspath(path))
        if not source.is_file():
            what = "does not exist" if not os.path.lexists(source) else "is not a regular file"
            raise DatastoreError(f"cannot ingest {source}: it {what}.")
        dataset_type = ref.dataset_type
        storage_class = self._storage_classes[dataset_type.storage_class]
        if formatter is None:
            reader = self.formatters.get(dataset_type)
            extension = reader.extension
        else:
            reader = self.formatters.from_name(formatter, storage_class.name)
            extension = _source_extension(source)
        dotted = self.formatters.dotted_name(type(reader))
        resolved = source.resolve()
        inside = resolved.is_relative_to(self.root)
        if mode == "auto":
            mode = "direct" if inside else "copy"
        if mode == "direct":
            recorded = resolved.relative_to(self.root).as_posix() if inside else str(source)
            size, checksum = self._measure(source)
            return StoredFileInfo(ref.id, recorded, dotted, storage_class.name, checksum, size)

        relative = self.templates.get(dataset_type).format(ref) + extension
        target = self._new_target(relative, ref)
        if mode == "copy":
            size, checksum = self._write_new(target, lambda tmp: shutil.copyfile(source, tmp))
        elif mode == "move":
            size, checksum = self._move(source, target)
        else:
            size, checksum = self._link(source, target, symbolic=(mode == "symlink"))
        return StoredFileInfo(ref.id, relative, dotted, storage_class.name, checksum, size)

    def _new_target(self, relative: str, ref: DatasetRef, *, clobber: bool = False) -> Path:
        """Return the absolute destination of a new file, checking it stays inside the root and is free
        (unless ``clobber``)."""
        self._check_length(relative, ref)
        target = self.root / relative
        parent = target.parent.resolve()
        if not parent.is_relative_to(self.root):
            raise FileTemplateError(
                f"the file of dataset {ref.dataset_type.name} {ref.data_id} would be written to {parent}, outside "
                f"the repository root {self.root} (through a symbolic link in {relative!r}). Remove the link."
            )
        if not clobber and os.path.lexists(target):
            raise DatastoreError(
                f"cannot write dataset {ref.dataset_type.name} {ref.data_id} (run {ref.run!r}): the file "
                f"{target} already exists, probably left by an interrupted write. `butler verify --fix` "
                "removes files that no dataset refers to."
            )
        return target

    def _check_length(self, relative: str, ref: DatasetRef) -> None:
        """Refuse a path the file system would refuse (a name over 255 bytes, a path over 4095)."""
        parts = relative.split("/")
        for i, part in enumerate(parts):
            limit = _NAME_MAX - (_TEMP_EXTRA if i == len(parts) - 1 else 0)
            size = len(part.encode("utf-8", "surrogateescape"))
            if size > limit:
                raise FileTemplateError(
                    f"the file of dataset {ref.dataset_type.name} {ref.data_id} (run {ref.run!r}) would have the "
                    f"{'file' if i == len(parts) - 1 else 'directory'} name {part[:60]!r}... of {size} bytes; file "
                    f"systems allow {limit}. Use a shorter run or dataset type name, or leave long values out of "
                    "the file name in datastore.templates (butler.yaml)."
                )
        size = len(str(self.root / relative).encode("utf-8", "surrogateescape")) + _TEMP_EXTRA
        if size >= _PATH_MAX:
            raise FileTemplateError(
                f"the file of dataset {ref.dataset_type.name} {ref.data_id} (run {ref.run!r}) would need a path of "
                f"{size} bytes (with its temporary name) under {self.root}; file systems allow {_PATH_MAX - 1}. "
                "Use shorter names, or a repository root nearer /."
            )

    def _makedirs(self, directory: Path) -> list[Path]:
        """Create a directory and its missing parents; return those created, deepest first."""
        missing = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        created = []
        for d in reversed(missing):
            try:
                d.mkdir()
                created.append(d)
            except FileExistsError:
                if not d.is_dir():
                    self._prune(created[::-1])
                    raise DatastoreError(
                        f"cannot create directory {d}: a file of that name exists (two file templates "
                        "produce clashing paths; edit datastore.templates in butler.yaml)."
                    ) from None
        return created[::-1]

    def _prune(self, directories: Iterable[Path]) -> None:
        """Remove the given directories, deepest first, while they are empty (never the root)."""
        for d in directories:
            if d == self.root or not d.is_relative_to(self.root):
                return
            try:
                os.rmdir(d)
            except OSError:
                return

    def _write_new(
        self, target: Path, produce: Callable[[Path], None], *, data: bytes | None = None
    ) -> tuple[int, str | None]:
        """Produce a file at a temporary name next to ``target``, measure it and rename it into place.

        ``data``, when given, is the file's content: it is measured in memory instead of re-reading
        the file.  On any exception the temporary file (and directories created for it) is removed
        and the exception re-raised.
        """
        created = self._makedirs(target.parent)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        try:
            produce(tmp)
            if data is None:
                size, checksum = self._measure(tmp)
            else:
                size = len(data)
                checksum = "sha256:" + hashlib.sha256(data).hexdigest() if self.checksum else None
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            self._prune(created)
            raise
        return size, checksum

    def _move(self, source: Path, target: Path) -> tuple[int, str | None]:
        """Move a file into place: a hard link then unlink when possible, else copy then unlink."""
        try:
            size, checksum = self._link(source, target, symbolic=False)
        except DatastoreError:  # another filesystem, or links unsupported
            size, checksum = self._write_new(target, lambda tmp: shutil.copyfile(source, tmp))
        source.unlink()
        return size, checksum

    def _link(self, source: Path, target: Path, *, symbolic: bool) -> tuple[int, str | None]:
        """Make ``target`` a hard or symbolic link to ``source`` and measure it."""
        created = self._makedirs(target.parent)
        try:
            if symbolic:
                os.symlink(source, target)
            else:
                os.link(source, target)
        except OSError as err:
            self._prune(created)
            kind = "symbolic link" if symbolic else "hard link"
            raise DatastoreError(
                f"cannot make a {kind} {target} -> {source}: {err}. Hard links need the file and the "
                "repository on one filesystem; use transfer='copy' or 'symlink'."
            ) from None
        try:
            return self._measure(target)
        except BaseException:
            target.unlink(missing_ok=True)
            self._prune(created)
            raise

    def _measure(self, path: Path) -> tuple[int, str | None]:
        """Return the size of a file and its ``"sha256:<hex>"`` checksum (None when checksums are off)."""
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            checksum = "sha256:" + hashlib.file_digest(stream, "sha256").hexdigest() if self.checksum else None
        return size, checksum

    # Reading ----------------------------------------------------------------------------------------

    def check(self, info: StoredFileInfo, *, checksum: bool = True) -> Path:
        """Check that a dataset's file exists with its recorded size and (optionally) checksum.

        Parameters
        ----------
        info : `StoredFileInfo`
            The dataset's record.
        checksum : `bool`, optional
            Also re-hash the file and compare with the recorded checksum (when one was recorded).

        Returns
        -------
        path : `pathlib.Path`
            The file's absolute path.

        Raises
        ------
        CorruptDatasetError
            If the file is missing, or its size or checksum differs from the record.
        DatastoreError
            If the record's checksum uses an unknown algorithm.
        """
        if info.is_inline:
            self._check_inline(info, checksum=checksum)
            return self.root
        path = self.abspath(info)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise CorruptDatasetError(
                f"file {path} of dataset {info.dataset_id} is missing: it was deleted or moved outside the "
                "butler. Restore it, or remove the dataset from the registry (`butler verify` lists such datasets)."
            ) from None
        if size != info.file_size:
            raise CorruptDatasetError(
                f"file {path} of dataset {info.dataset_id} is damaged: expected {info.file_size} bytes, found "
                f"{size}. Restore it, or remove the dataset."
            )
        if checksum and info.checksum:
            algorithm, _, expected = info.checksum.partition(":")
            with open(path, "rb") as stream:
                try:
                    found = hashlib.file_digest(stream, algorithm).hexdigest()
                except ValueError:
                    raise DatastoreError(
                        f"the record of dataset {info.dataset_id} has checksum {info.checksum!r} of an unknown "
                        "algorithm."
                    ) from None
            if found != expected:
                raise CorruptDatasetError(
                    f"file {path} of dataset {info.dataset_id} is damaged: expected checksum {info.checksum}, "
                    f"found {algorithm}:{found}. Restore it, or remove the dataset."
                )
        return path

    @staticmethod
    def _check_inline(info: StoredFileInfo, *, checksum: bool) -> None:
        if info.inline is None:
            raise DatastoreError(f"dataset {info.dataset_id} is stored in the registry, but its bytes were not read.")
        problem = None
        if len(info.inline) != info.file_size:
            problem = f"expected {info.file_size} bytes, found {len(info.inline)}"
        elif checksum and info.checksum and info.checksum != "sha256:" + hashlib.sha256(info.inline).hexdigest():
            problem = f"its checksum differs from the recorded {info.checksum}"
        if problem:
            raise CorruptDatasetError(f"the registry-stored content of dataset {info.dataset_id} is damaged: {problem}.")

    def get(
        self,
        info: StoredFileInfo,
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """Read a dataset from its file.

        Parameters
        ----------
        info : `StoredFileInfo`
            The dataset's record (from `put` or `ingest`).
        component : `str`, optional
            Read only this component.
        parameters : `Mapping`, optional
            Formatter read parameters (``{"columns": [...]}``).

        Returns
        -------
        obj : `object`
            The dataset, the component, or the subset selected by ``parameters``.

        Raises
        ------
        CorruptDatasetError
            If the file is missing, its size differs from the recorded one, its checksum differs (when
            ``verify_on_get``), or the formatter cannot read it.
        FormatterError
            If the component or a parameter is not supported, or the formatter cannot be imported.
        """
        path = self.check(info, checksum=self.verify_on_get)
        formatter: Formatter = self.formatters.from_name(info.formatter, info.storage_class)
        try:
            if info.is_inline:
                return formatter.from_bytes(info.inline, component=component, parameters=parameters)  # type: ignore[attr-defined]
            return formatter.read(path, component=component, parameters=parameters)
        except (ButlerError, MemoryError):
            raise
        except Exception as err:
            raise CorruptDatasetError(
                f"cannot read file {path} of dataset {info.dataset_id} with {info.formatter}: "
                f"{type(err).__name__}: {err}. The file is damaged or not in that format."
            ) from err

    # Removal and inventory --------------------------------------------------------------------------

    def remove(self, infos: Iterable[StoredFileInfo]) -> None:
        """Delete the files of datasets, then the directories left empty (never the root).

        Symbolic links are removed, never their targets; files ingested with ``transfer="direct"``
        from outside the root are left alone; files already missing are ignored.

        Raises
        ------
        DatastoreError
            If a file cannot be deleted (permissions, or a directory in its place).
        """
        directories = set()
        for info in infos:
            if info.is_external or info.is_inline:
                continue
            path = self.abspath(info)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise DatastoreError(f"cannot delete {path} of dataset {info.dataset_id}: {err}") from None
            directories.add(path.parent)
        for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
            while directory != self.root and directory.is_relative_to(self.root):
                try:
                    os.rmdir(directory)
                except FileNotFoundError:
                    pass
                except OSError:
                    break
                directory = directory.parent

    def walk_files(self) -> Iterator[str]:
        """Yield the relative POSIX path of every dataset-like file under the root, sorted per directory.

        Excludes the repository's own top-level files (``butler.yaml``, the other configuration files,
        the SQLite database and its ``-wal``/``-shm``/``-journal`` files), its service directories
        (``.quarantine/``, ``.parsl/``, ``.locks/``) and temporary files of writes in progress or
        killed (see `temp_files`).  Symbolic links to files are included;
        symbolic links to directories are not followed.
        """
        for relative, name in self._walk():
            if _TEMP_RE.match(name):
                continue
            if not relative and (name in self._repository_files or _DATABASE_FILE_RE.search(name)):
                continue
            yield f"{relative}/{name}" if relative else name

    def temp_files(self) -> Iterator[str]:
        """Yield the relative POSIX paths of temporary files (``.{name}.tmp-{hex}``) under the root.

        These are left by writes that were killed; a write in progress also has one, so delete them
        only when no process is writing to the repository.
        """
        for relative, name in self._walk():
            if _TEMP_RE.match(name):
                yield f"{relative}/{name}" if relative else name

    def _walk(self) -> Iterator[tuple[str, str]]:
        """Yield (relative POSIX directory or "", file name) of every file under the root, outside the
        service directories."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            relative = "" if relative == "." else relative
            dirnames[:] = sorted(d for d in dirnames if relative or d not in SERVICE_DIRECTORIES)
            for name in sorted(filenames):
                yield relative, name


def _source_extension(path: Path) -> str:
    """Return a file's extension, keeping a compression suffix with the one before (``.fits.fz``)."""
    suffixes = path.suffixes
    if not suffixes:
        return ""
    if suffixes[-1].lower() in _COMPRESSION_SUFFIXES and len(suffixes) > 1:
        return "".join(suffixes[-2:])
    return suffixes[-1]
