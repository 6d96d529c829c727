"""File templates: where the datastore puts each dataset's file, relative to the repository root.

A template such as ``"{run}/{datasetType}/{band:?}/{datasetType}_{visit}_{detector}_{run}"`` is
rendered for a `DatasetRef` by substituting its run, dataset type name and data ID values.  Templates
are configured in ``butler.yaml`` (``datastore.templates``), keyed by dataset type name, storage class
name or ``default``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .datasets import DatasetRef, DatasetType
from .errors import FileTemplateError, did_you_mean

__all__ = ["FileTemplate", "FileTemplates"]

# Fields that do not come from the data ID.
_SPECIAL_FIELDS = frozenset({"run", "datasetType", "component"})
_FIELD_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z_][A-Za-z0-9_]*)?(:\?)?$")
_MAX_VALUE_LENGTH = 200
_UNSAFE_CHAR_RE = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")
_HOW_TO_FIX = "Edit datastore.templates in the repository's butler.yaml."


@dataclass(frozen=True)
class _Field:
    """One ``{name}``, ``{name:?}`` or ``{dimension.field}`` of a template."""

    name: str  # "visit" or "visit.name"
    optional: bool

    @property
    def dimension(self) -> str:
        """The part before the dot (the whole name when there is no dot)."""
        return self.name.partition(".")[0]


def _parse(template: str) -> tuple[list[str], list[list[_Field]]]:
    """Split a template into literals and groups of adjacent fields.

    Returns ``(literals, groups)`` with ``len(literals) == len(groups) + 1``: the rendered path is
    ``literals[0] + groups[0] + literals[1] + ... + literals[-1]``.  Fields with no literal text between
    them form one group.
    """
    literals: list[str] = []
    groups: list[list[_Field]] = []
    pos = 0  # end of the last field parsed
    for match in re.finditer(r"[{}]", template):
        if match.start() < pos:
            continue
        if match.group() == "}":
            raise FileTemplateError(
                f"file template {template!r} has an unmatched '}}' at column {match.start() + 1}. {_HOW_TO_FIX}"
            )
        end = template.find("}", match.start())
        inner_open = template.find("{", match.start() + 1)
        if end < 0 or (0 <= inner_open < end):
            raise FileTemplateError(
                f"file template {template!r} has an unclosed '{{' at column {match.start() + 1}. {_HOW_TO_FIX}"
            )
        body = template[match.start() + 1 : end]
        parsed = _FIELD_RE.match(body)
        if not parsed:
            what = "an empty field '{}'" if not body else f"a malformed field {{{body}}}"
            raise FileTemplateError(
                f"file template {template!r} has {what}: fields are {{name}}, {{dimension.field}}, with ':?' "
                f"appended for optional ones (e.g. {{band:?}}). {_HOW_TO_FIX}"
            )
        field = _Field(parsed.group(1) + (parsed.group(2) or ""), optional=bool(parsed.group(3)))
        if groups and match.start() == pos:
            groups[-1].append(field)  # no literal text since the previous field: same group
        else:
            literals.append(template[pos : match.start()])
            groups.append([field])
        pos = end + 1
    literals.append(template[pos:])
    return literals, groups


class FileTemplate:
    """A path template for dataset files.

    Parameters
    ----------
    template : `str`
        Literal text and fields in braces: ``{run}``, ``{datasetType}``, ``{component}``, any dimension
        (``{visit}``) or dimension record field (``{visit.name}``).  A trailing ``:?`` (``{band:?}``)
        makes a field optional: when its value is unknown it is left out with one adjacent ``"_"``
        separator (preferring the one before it), and a path segment left empty is dropped.

    Attributes
    ----------
    template : `str`
        The template text.
    fields : `frozenset` [`str`]
        All field names (``{"run", "datasetType", "visit", "visit.name"}``).
    required_fields : `frozenset` [`str`]
        The fields not marked optional.

    Raises
    ------
    FileTemplateError
        If the template has unbalanced braces, an empty or malformed field, is absolute, or has an
        empty, ``.`` or ``..`` path segment in its literal text.
    """

    def __init__(self, template: str):
        if not isinstance(template, str) or not template:
            raise FileTemplateError(f"file template {template!r} must be a non-empty string. {_HOW_TO_FIX}")
        self.template = template
        self._literals, self._groups = _parse(template)
        if template.startswith("/") or "\\" in template:
            raise FileTemplateError(
                f"file template {template!r} must be a relative POSIX path (no leading '/', no '\\'). {_HOW_TO_FIX}"
            )
        if any(segment in ("", ".", "..") for segment in template.split("/")):
            raise FileTemplateError(
                f"file template {template!r} has an empty, '.' or '..' path segment. {_HOW_TO_FIX}"
            )
        all_fields = [f for group in self._groups for f in group]
        self.fields: frozenset[str] = frozenset(f.name for f in all_fields)
        self.required_fields: frozenset[str] = frozenset(f.name for f in all_fields if not f.optional)

    def __repr__(self) -> str:
        return f"FileTemplate({self.template!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileTemplate):
            return self.template == other.template
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.template)

    def validate(self, dataset_type: DatasetType) -> None:
        """Check that this template gives distinct paths to the datasets of a dataset type.

        Parameters
        ----------
        dataset_type : `DatasetType`
            The dataset type the template will be used for.

        Raises
        ------
        FileTemplateError
            If the template lacks a required ``{run}`` field, lacks a field for one of the dataset
            type's required dimensions, or names a field that is neither special (``run``,
            ``datasetType``, ``component``) nor a dimension of the universe.
        """
        universe = dataset_type.dimensions.universe
        known = set(_SPECIAL_FIELDS) | set(universe.dimensions)
        unknown = sorted(f for f in self.fields if f.partition(".")[0] not in known)
        if unknown:
            hint = did_you_mean(unknown[0].partition(".")[0], known)
            raise FileTemplateError(
                f"file template {self.template!r} (used for dataset type {dataset_type.name!r}) has unknown "
                f"field(s) {', '.join(unknown)}. {hint} {_HOW_TO_FIX}"
            )
        problems = []
        if "run" not in self.required_fields:
            problems.append("a required {run} field (not {run:?})")
        covered = {f.partition(".")[0] for f in self.fields}
        missing = [d for d in dataset_type.dimensions.required if d not in covered]
        if missing:
            problems.append("field(s) for dimension(s) " + ", ".join(f"{{{d}}}" for d in missing))
        if problems:
            raise FileTemplateError(
                f"file template {self.template!r} cannot be used for dataset type {dataset_type.name!r} "
                f"(dimensions {dataset_type.dimensions}): it lacks {' and '.join(problems)}, so two datasets "
                f"could get the same path. {_HOW_TO_FIX} Add the missing fields to that template, or add a "
                f"template keyed by {dataset_type.parent_name!r} or {dataset_type.storage_class!r}."
            )

    def format(self, ref: DatasetRef) -> str:
        """Render the path of a dataset's file.

        Parameters
        ----------
        ref : `DatasetRef`
            The dataset.  Implied dimension values are used only when ``ref.data_id.has_full()``;
            ``{dim.field}`` values only when it has records.

        Returns
        -------
        path : `str`
            Relative POSIX path, without the file extension.

        Raises
        ------
        FileTemplateError
            If a required field has no value, a value is unsafe in a path (empty, ``.``, ``..``,
            contains ``/``, ``\\`` or control characters, or is longer than 200 characters), or the
            rendered path has no file name.
        """
        literals = list(self._literals)
        rendered: list[str] = []
        for i, group in enumerate(self._groups):
            # In the file name itself a nested run name's "/" becomes "_" (as daf_butler's {run:/}).
            in_file_name = not any("/" in lit for lit in self._literals[i + 1 :])
            text = "".join(self._value(field, ref, in_file_name=in_file_name) for field in group)
            if not text:  # every field of the group is optional and unknown: drop one "_" separator
                if literals[i].endswith("_"):
                    literals[i] = literals[i][:-1]
                elif literals[i + 1].startswith("_"):
                    literals[i + 1] = literals[i + 1][1:]
            rendered.append(text)
        out = literals[0] + "".join(text + lit for text, lit in zip(rendered, literals[1:]))
        segments = out.split("/")
        if not segments[-1]:
            raise FileTemplateError(
                f"file template {self.template!r} gives no file name for {ref}: every field of its last path "
                f"segment is optional and unknown. {_HOW_TO_FIX}"
            )
        segments = [s for s in segments if s]
        if any(s in (".", "..") for s in segments):
            raise FileTemplateError(
                f"file template {self.template!r} renders {out!r} for {ref}, which has a '.' or '..' path "
                f"segment. {_HOW_TO_FIX}"
            )
        return "/".join(segments)

    def _value(self, field: _Field, ref: DatasetRef, *, in_file_name: bool = False) -> str:
        """Return the sanitised value of one field, or ``""`` if it is optional and unknown."""
        value = _lookup(field.name, ref)
        if value is None:
            if field.optional:
                return ""
            raise FileTemplateError(
                f"file template {self.template!r} needs a value for {{{field.name}}}, but dataset "
                f"{ref.dataset_type.name!r} with data ID {ref.data_id} (run {ref.run!r}) has none. Expand the "
                f"data ID (implied values and records come from the registry), or mark the field optional "
                f"({{{field.name}:?}}) in butler.yaml."
            )
        text = str(value)
        # A RUN name may nest like a path ("u/someone/run1"), as in the LSST stack; each of its
        # segments obeys the rules every other value obeys.
        parts = text.split("/") if field.name == "run" else [text]
        bad = None
        if any(part in ("", ".", "..") for part in parts):
            bad = "is empty, '.' or '..'" if len(parts) == 1 else "has an empty, '.' or '..' path segment"
        elif len(text) > _MAX_VALUE_LENGTH:
            bad = f"is longer than {_MAX_VALUE_LENGTH} characters"
        elif any(_UNSAFE_CHAR_RE.search(part) for part in parts):
            bad = "contains a path separator ('/' or '\\') or a control character"
        if bad:
            raise FileTemplateError(
                f"the value {text[:_MAX_VALUE_LENGTH]!r} of {{{field.name}}} for dataset {ref.dataset_type.name!r} "
                f"{ref.data_id} {bad}, so it cannot be part of a file path. Use another value (rename the "
                "run or the dimension record)."
            )
        return text.replace("/", "_") if in_file_name else text


def _lookup(name: str, ref: DatasetRef) -> object | None:
    """Return the raw value of a template field for a dataset, or None if it is unknown."""
    if name == "run":
        return ref.run
    if name == "datasetType":
        return ref.dataset_type.parent_name
    if name == "component":
        return ref.dataset_type.component
    data_id = ref.data_id
    dimension, _, attr = name.partition(".")
    if not attr:
        if dimension in data_id.dimensions.names:
            try:
                return data_id[dimension]
            except KeyError:  # an implied value the data ID does not know
                return None
        return None
    if not data_id.has_records():
        return None
    record = data_id.records.get(dimension)
    if record is None:
        return None
    if attr not in record.element.field_names:
        raise FileTemplateError(
            f"file template field {{{name}}}: a {dimension} record has no field {attr!r}. "
            f"{did_you_mean(attr, record.element.field_names)} {_HOW_TO_FIX}"
        )
    return record.get(attr)


class FileTemplates:
    """The file templates of a datastore, looked up per dataset type.

    Parameters
    ----------
    config : `Mapping` [`str`, `str`]
        The ``datastore.templates`` section of ``butler.yaml``: dataset type name, storage class name
        or ``default`` -> template string.

    Raises
    ------
    FileTemplateError
        If there is no ``default`` template or a template is malformed.
    """

    def __init__(self, config: Mapping[str, str]):
        if "default" not in config:
            raise FileTemplateError(
                f"datastore.templates has no 'default' template (keys: {', '.join(sorted(config)) or 'none'}). "
                f"{_HOW_TO_FIX} Add one, e.g. default: \"{{run}}/{{datasetType}}/{{datasetType}}_{{run}}\"."
            )
        self._templates: dict[str, FileTemplate] = {}
        for key, text in config.items():
            try:
                self._templates[str(key)] = FileTemplate(text)
            except FileTemplateError as err:
                raise FileTemplateError(f"datastore.templates[{key!r}]: {err}") from None

    def get(self, dataset_type: DatasetType) -> FileTemplate:
        """Return the template of a dataset type.

        Looks up the dataset type's name (the parent's name for a component), then its storage class
        name, then ``default``.
        """
        templates = self._templates
        return (
            templates.get(dataset_type.parent_name)
            or templates.get(dataset_type.storage_class)
            or templates["default"]
        )

    def __getitem__(self, key: str) -> FileTemplate:
        return self._templates[key]

    def keys(self) -> list[str]:
        """The configured keys, sorted."""
        return sorted(self._templates)
