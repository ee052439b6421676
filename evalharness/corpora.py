"""Document corpora: each source is a `CorpusSource` registered in `CORPORA` (or `local:PATH`) that
yields `Document`s in a stable order; `load_corpus` tokenizes them without special tokens (token-id
sources are used as stored, `check_token_ids` refusing ids outside the vocabulary), filters by
length, selects the first `n_docs` or a seeded sample, and caches the ids per corpus and tokenizer.

Sources and selection: docs/tasks-and-protocols.md#corpora (the `--dataset` list: docs/cli.md)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import os
import random
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from . import hub
from .errors import EvalHarnessError
from .hub import default_cache_dir

__all__ = [
    "CORPORA",
    "CorpusError",
    "CorpusSource",
    "Document",
    "TokenizedDoc",
    "available_corpora",
    "check_token_ids",
    "dataset_label",
    "default_cache_dir",
    "get_corpus",
    "iter_documents",
    "load_corpus",
    "tokenizer_fingerprint",
]

LOCAL_PREFIX = "local:"
# Bump when the cache layout or the tokenization procedure changes (2: documents that are not
# UTF-8 are rejected, no longer decoded with U+FFFD, so older caches may hold such documents).
_CACHE_FORMAT = 2
_TOKENIZE_BATCH = 64  # documents per tokenizer call


class CorpusError(EvalHarnessError, ValueError):
    """A corpus name, path, field or selection that cannot be served."""


@dataclass(frozen=True)
class Document:
    """One document: a stable id and its full text."""

    doc_id: str
    text: str


@dataclass(frozen=True)
class TokenizedDoc:
    """One document as 1-D int64 token ids, encoded without special tokens (no BOS)."""

    doc_id: str
    ids: torch.Tensor


# --------------------------------------------------------------------------- sources


class CorpusSource:
    """Base class of corpus sources.

    Subclasses implement `describe`, `documents` and `identity`.
    """

    def describe(self) -> str:
        """Return a one-line human description of the source."""
        raise NotImplementedError

    def documents(self, text_field: str | None = None) -> Iterator[Document]:
        """Yield the source's documents in a stable order."""
        raise NotImplementedError

    def identity(self, text_field: str | None = None) -> str:
        """Return a string that changes whenever the documents may change (cache key)."""
        raise NotImplementedError


    def stored_token_ids(self) -> Iterator[tuple[str, object]] | None:
        """`(doc_id, ids)` per row when the source stores token ids in an `input_ids` column (the
        authors' pre-tokenized sets, e.g. `emozilla/proofpile-test-tokenized`); None otherwise. The
        ids are used as they are: no re-tokenization, and they are taken as document tokens without
        special tokens (how the authors' sets are made), so the protocols add BOS exactly as for
        text. Doc ids follow the source's text path (line/row index, split/row)."""
        return None


def _reject_text_field(kind: str, text_field: str | None) -> None:
    """Raise if a text field is given for a source whose documents are whole files."""
    if text_field is not None:
        raise CorpusError(
            f"text_field={text_field!r} does not apply to {kind}, whose documents are whole files; "
            "text_field is only valid for .jsonl, .parquet and Hugging Face dataset corpora."
        )


def _not_utf8(path: Path, exc: UnicodeDecodeError, where: str = "") -> CorpusError:
    """One sentence for a document that is not UTF-8 text (never decoded with replacement characters)."""
    return CorpusError(f"{path}{where} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it to "
                       "UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it from the corpus.")


def _read_text_file(path: Path) -> str:
    """Read a (possibly gzipped) UTF-8 text file exactly, without newline translation; a file that
    is not valid UTF-8 is an error naming it, never silently decoded."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None


def _files_identity(files: Sequence[tuple[str, Path]]) -> str:
    """Identity of a list of files: absolute paths, sizes and modification times."""
    lines = []
    for doc_id, path in files:
        st = path.stat()
        lines.append(f"{doc_id}\t{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}")
    return "\n".join(lines)


def _relative_files(root: Path, paths: Iterable[Path]) -> list[tuple[str, Path]]:
    """Pair each path with its POSIX path relative to `root`, sorted by that id."""
    pairs = [(p.relative_to(root).as_posix(), p) for p in paths]
    return sorted(pairs, key=lambda pair: pair[0])


class _FileListSource(CorpusSource):
    """A source whose documents are whole text files (doc_id = relative path)."""

    kind = "this corpus"

    def files(self) -> list[tuple[str, Path]]:
        """Return `(doc_id, path)` pairs in document order."""
        raise NotImplementedError

    def documents(self, text_field: str | None = None) -> Iterator[Document]:
        """Yield one document per file, in sorted relative-path order."""
        _reject_text_field(self.kind, text_field)
        for doc_id, path in self.files():
            yield Document(doc_id, _read_text_file(path))

    def identity(self, text_field: str | None = None) -> str:
        """Identity: every file's path, size and mtime."""
        _reject_text_field(self.kind, text_field)
        return f"{type(self).__name__}\n{_files_identity(self.files())}"


def _dpkg_listed_files(package: str) -> list[Path]:
    """Files that `dpkg -L` lists for an installed package (empty if unknown)."""
    try:
        proc = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return [Path(line) for line in proc.stdout.splitlines() if line.strip()]


class CoqStdlibSource(_FileListSource):
    """Every `.v` file of the Debian package `libcoq-stdlib`.

    Files are found with `dpkg -L libcoq-stdlib` (falling back to the usual install
    roots); doc ids are paths relative to the common root, e.g. `theories/Lists/List.v`.
    """

    package = "libcoq-stdlib"
    kind = "coq-stdlib"
    fallback_roots = ("/usr/lib/ocaml/coq", "/usr/lib/coq", "/usr/local/lib/coq")

    def describe(self) -> str:
        """One-line description."""
        return f"Coq standard library sources (.v files of the Debian package {self.package})"

    def _v_files(self) -> list[Path]:
        """Absolute paths of the package's .v files."""
        listed = [p for p in _dpkg_listed_files(self.package) if p.suffix == ".v" and p.is_file()]
        if listed:
            return listed
        for root in map(Path, self.fallback_roots):
            if (root / "theories").is_dir():
                return [p for p in root.rglob("*.v") if p.is_file()]
        return []

    def files(self) -> list[tuple[str, Path]]:
        """`(relative path, path)` of every .v file, sorted."""
        paths = self._v_files()
        if not paths:
            raise CorpusError(
                f"corpus 'coq-stdlib' needs the Debian package {self.package}, whose .v files were not found; "
                f"install it with `apt-get install -y {self.package}`."
            )
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
        return _relative_files(root, paths)


class DebianPolicySource(_FileListSource):
    """The plain-text documents of the Debian package `debian-policy`.

    These are the `*.txt.gz` (gunzipped) and `*.txt` files under
    `/usr/share/doc/debian-policy`, skipping the rendered `*.html` trees (whose
    `_sources/*.rst.txt` duplicate the manuals); doc id = path relative to that folder.
    """

    package = "debian-policy"
    kind = "debian-policy"
    doc_dir = Path("/usr/share/doc/debian-policy")

    def describe(self) -> str:
        """One-line description."""
        return f"Debian policy manuals (plain-text documents of the Debian package {self.package})"

    def _is_text_document(self, path: Path) -> bool:
        """A `.txt`/`.txt.gz` file outside the rendered `*.html` trees."""
        in_html_tree = any(part.endswith(".html") for part in path.relative_to(self.doc_dir).parts[:-1])
        return path.is_file() and path.name.endswith((".txt", ".txt.gz")) and not in_html_tree

    def files(self) -> list[tuple[str, Path]]:
        """`(relative path, path)` of every plain-text document, sorted."""
        found = [p for p in self.doc_dir.rglob("*") if self._is_text_document(p)] if self.doc_dir.is_dir() else []
        if not found:
            raise CorpusError(
                f"corpus 'debian-policy' needs the Debian package {self.package}, whose text documents "
                f"were not found in {self.doc_dir}; install it with `apt-get install -y {self.package}` "
                "(and make sure dpkg does not path-exclude /usr/share/doc)."
            )
        return _relative_files(self.doc_dir, found)


class TextFolderSource(_FileListSource):
    """A local folder of `.txt` files (recursive; doc id = relative path)."""

    kind = "a folder of .txt files"

    def __init__(self, root: Path):
        self.root = root

    def describe(self) -> str:
        """One-line description."""
        return f"local folder of .txt files: {self.root}"

    def files(self) -> list[tuple[str, Path]]:
        """`(relative path, path)` of every .txt file, sorted."""
        files = [p for p in self.root.rglob("*") if p.is_file()]  # one walk of the folder
        found = [p for p in files if p.suffix == ".txt"]
        tables = sorted(p for p in files if p.suffix in (".jsonl", ".parquet"))
        if tables:  # one folder, two formats: which documents were meant is not ours to guess
            raise CorpusError(f"local corpus folder '{self.root}' holds {tables[0].name}"
                              + (f" and {len(tables) - 1} more .jsonl/.parquet files" if len(tables) > 1 else "")
                              + (" besides its .txt files" if found else "")
                              + f"; give the file itself (local:{tables[0]}) or a folder of .txt files only.")
        if not found:
            raise CorpusError(f"local corpus folder '{self.root}' contains no .txt files; put one document per .txt "
                              f"file there.")
        return _relative_files(self.root, found)


def _missing_field_error(path: Path, field: str, fields: Iterable[str], where: str = "") -> CorpusError:
    """Error naming the requested field and the fields that exist."""
    names = ", ".join(repr(f) for f in fields) or "none"
    return CorpusError(f"text field {field!r} is not in {path}{where}; fields present: {names} (choose one with "
                       f"text_field).")


def _check_text_value(value: object, path: Path, field: str, row: int) -> str:
    """Return `value` if it is a string, else raise naming the row (0-based `row`, named from 1)."""
    if not isinstance(value, str):
        raise CorpusError(f"field {field!r} of row {row + 1} in {path} is {type(value).__name__}, not text; "
                          "pick a text field.")
    return value


class _SingleFileSource(CorpusSource):
    """A local file holding one document per record, text in a named field."""

    default_field = "text"

    def __init__(self, path: Path):
        self.path = path

    def identity(self, text_field: str | None = None) -> str:
        """Identity: the file's path, size and mtime, plus the field."""
        field = text_field or self.default_field
        return f"{type(self).__name__}\n{field}\n{_files_identity([('', self.path)])}"


class JsonlSource(_SingleFileSource):
    """A local `.jsonl` file: one JSON object per line; doc id = 0-based line index."""

    def describe(self) -> str:
        """One-line description."""
        return f"local JSON-lines file: {self.path}"

    def documents(self, text_field: str | None = None) -> Iterator[Document]:
        """Yield one document per non-blank line, text from `text_field` (default "text")."""
        field = text_field or self.default_field
        for index, value in self._field_values(field):
            yield Document(str(index), _check_text_value(value, self.path, field, index))

    def _field_values(self, field: str) -> Iterator[tuple[int, object]]:
        """(line index, value of `field`) of each non-blank line; a line without it is an error."""
        for index, line in _jsonl_lines(self.path):
            record = self._parse(line, index)
            if field not in record:
                raise _missing_field_error(self.path, field, record.keys(), f" (line {index + 1})")
            yield index, record[field]

    def _parse(self, line: str, index: int) -> dict:
        """Parse one line as a JSON object."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"line {index + 1} of {self.path} is not valid JSON ({exc.msg}); each line must be one "
                              f"JSON object.") from None
        if not isinstance(record, dict):
            raise CorpusError(f"line {index + 1} of {self.path} is a JSON {type(record).__name__}, not an object; each "
                              f"line must be one JSON object.")
        return record


    def stored_token_ids(self) -> Iterator[tuple[str, object]] | None:
        first = next(_jsonl_lines(self.path), None)
        if first is None or PRETOKENIZED_FIELD not in self._parse(first[1], first[0]):
            return None
        return ((str(index), ids) for index, ids in self._field_values(PRETOKENIZED_FIELD))


class ParquetSource(_SingleFileSource):
    """A local `.parquet` file; doc id = 0-based row index."""

    def describe(self) -> str:
        """One-line description."""
        return f"local Parquet file: {self.path}"

    def documents(self, text_field: str | None = None) -> Iterator[Document]:
        """Yield one document per row (read with the `datasets` parquet builder, as a hub copy is),
        text from `text_field` (default "text")."""
        field = text_field or self.default_field
        dataset = _read_with_builder("parquet", [self.path], "the local Parquet file")
        if field not in dataset.column_names:
            raise _missing_field_error(self.path, field, dataset.column_names)
        for row, value in enumerate(_column_values(dataset, field)):
            yield Document(str(row), _check_text_value(value, self.path, field, row))


    def stored_token_ids(self) -> Iterator[tuple[str, object]] | None:
        import pyarrow  # lazy: part of the ~1 s datasets import, only for Parquet files
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except pyarrow.ArrowException as exc:  # ArrowInvalid: not Parquet, or its footer is damaged
            reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
            raise CorpusError(f"{self.path} is not a readable Parquet file ({reason}); download or write it "
                              "again") from None
        if PRETOKENIZED_FIELD not in parquet.schema_arrow.names:
            return None
        batches = (b.column(0).to_pylist() for b in parquet.iter_batches(columns=[PRETOKENIZED_FIELD],
                                                                          batch_size=256))
        return ((str(i), ids) for i, ids in enumerate(itertools.chain.from_iterable(batches)))


def _read_with_builder(builder: str, files: Sequence[Path], what: str):
    """One split of local files read by the `datasets` json/parquet builder; CorpusError naming
    `what` and the files when they cannot be read."""
    import datasets  # lazy: heavy import

    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as exc:  # noqa: BLE001 - the builders raise many kinds; one sentence names the files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorpusError(f"could not read {what} ({', '.join(map(str, files))}): {first}") from exc


def _column_values(dataset, field: str) -> Iterator[object]:
    """The values of one column of a `datasets.Dataset`, in row order."""
    for batch in dataset.select_columns([field]).iter(batch_size=64):
        yield from batch[field]


# ------------------------------------------------------------------ HF datasets


@dataclass(frozen=True)
class HFDatasetSpec:
    """Where one Hugging Face dataset keeps its documents."""

    dataset_id: str
    config: str | None
    split: str
    field: str

    def label(self) -> str:
        """Human label, e.g. `'tau/scrolls' (config 'gov_report', split 'test')`."""
        config = f"config {self.config!r}, " if self.config else ""
        return f"{self.dataset_id!r} ({config}split {self.split!r})"


class HFDatasetSource(CorpusSource):
    """A Hugging Face dataset split (with optional fallbacks); doc id = `<split>/<row index>`."""

    def __init__(self, name: str, specs: Sequence[HFDatasetSpec]):
        self.name = name
        self.specs = tuple(specs)

    def describe(self) -> str:
        """One-line description."""
        labels = " or ".join(f"{s.label()} field {s.field!r}" for s in self.specs)
        return f"Hugging Face dataset {labels}"

    def identity(self, text_field: str | None = None) -> str:
        """Identity: the dataset ids, configs, splits and fields."""
        return "\n".join(
            f"hf\t{s.dataset_id}\t{s.config}\t{s.split}\t{text_field or s.field}" for s in self.specs
        )

    def documents(self, text_field: str | None = None) -> Iterator[Document]:
        """Load the dataset (cache or hub) and yield one document per row."""
        dataset, spec = self._load()
        field = text_field or spec.field
        if field not in dataset.column_names:
            names = ", ".join(repr(c) for c in dataset.column_names)
            raise CorpusError(f"text field {field!r} is not in HF dataset {spec.label()}; fields present: {names}.")
        row = 0
        for batch in dataset.select_columns([field]).iter(batch_size=64):
            for value in batch[field]:
                if not isinstance(value, str):
                    raise CorpusError(f"field {field!r} of row {row} in HF dataset {spec.label()} is not text.")
                yield Document(f"{spec.split}/{row}", value)
                row += 1

    def _load(self):
        """Return `(dataset, spec)` for the first spec that loads, else raise CorpusError."""
        import datasets  # lazy: heavy import, only needed for HF corpora

        offline = hub.work_offline()
        errors: list[BaseException] = []
        with hub.forced_offline(offline):
            for spec in self.specs:
                try:
                    ds = datasets.load_dataset(spec.dataset_id, spec.config, split=spec.split, streaming=False)
                except Exception as exc:  # noqa: BLE001 - classified below
                    errors.append(exc)
                else:
                    return ds, spec
        raise self._load_error(errors, offline)

    def _load_error(self, errors: Sequence[BaseException], offline: bool) -> CorpusError:
        """One-sentence error for a failed load."""
        if all(hub.unavailable_reason(e) == hub.SCRIPT_DATASET for e in errors):
            return _script_dataset_error(self.name, self.specs)
        labels = " or its fallback ".join(f"HF dataset {s.label()}" for s in self.specs)
        if offline or all(hub.unavailable_reason(e) == hub.OFFLINE for e in errors):
            if hub.offline_requested():
                why = "HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set"
            elif offline:
                why = "no connection to the hub endpoint"
            else:
                why = f"{type(errors[-1]).__name__}"
            return CorpusError(
                f"corpus {self.name!r} needs {labels}, which is not in the local HF cache and the hub can't be "
                f"reached ({why}); download it on a machine with network access, or use local:PATH."
            )
        details = "; ".join(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" for e in errors)
        return CorpusError(f"corpus {self.name!r} could not load {labels} ({details}).")

    def stored_token_ids(self) -> Iterator[tuple[str, object]] | None:
        dataset, spec = self._load()
        return pretokenized_rows(dataset, spec.split)


def pretokenized_rows(dataset, split: str) -> Iterator[tuple[str, object]] | None:
    """(`split/i`, token ids) of each row of a `datasets` split holding `PRETOKENIZED_FIELD`; None
    when it has no such column."""
    if PRETOKENIZED_FIELD not in dataset.column_names:
        return None
    rows = (ids for batch in dataset.select_columns([PRETOKENIZED_FIELD]).iter(batch_size=64)
            for ids in batch[PRETOKENIZED_FIELD])
    return ((f"{split}/{i}", ids) for i, ids in enumerate(rows))


# The YaRN authors' pre-tokenized copies of the named corpora (Llama-2 token ids; jquesnelle/yarn eval.sh).
PRETOKENIZED_SETS = {"proofpile": "hf:emozilla/proofpile-test-tokenized",
                     "govreport": "hf:emozilla/govreport-test-tokenized",
                     "pg19": "hf:emozilla/pg19-test-tokenized"}


def _script_dataset_error(name: str, specs: Sequence[HFDatasetSpec]) -> CorpusError:
    """One sentence for datasets defined by a loading script, which `datasets` >= 4 refuses to run,
    naming what to use instead."""
    import datasets  # lazy: heavy import (≈ 1.3 s), only for hub corpora

    labels = " and its fallback ".join(f"HF dataset {s.label()}" for s in specs)
    alternatives = []
    if name in PRETOKENIZED_SETS:
        alternatives.append(f"the YaRN authors' pre-tokenized {PRETOKENIZED_SETS[name]} (Llama-2 token ids: only "
                            "for models with the Llama-2 tokenizer)")
    if name in CORPORA:
        alternatives.append(f"a local copy {name}=DIR in the dataset's hub layout")
    alternatives.append("local:PATH (a .jsonl or .parquet file of the split)")
    choices = ", ".join(alternatives[:-1]) + (" or " if len(alternatives) > 1 else "") + alternatives[-1]
    return CorpusError(f"corpus {name!r} needs {labels}, which is defined by a loading script that datasets "
                       f"{datasets.__version__} no longer runs; use {choices}.")


_SPLIT_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _split_files(folder: Path, split: str) -> list[Path]:
    """Files holding `split` in a hub-layout folder: `<split>.<ext>` or shards `<split>-*`/`<split>_*`.

    Searched in `folder` and its sub-folders (a hub snapshot keeps parquet shards in `data/`
    or a config folder), in sorted path order.
    """
    found = []
    for path in sorted(folder.rglob(f"{split}*")):
        rest = path.name[len(split):]
        if path.is_file() and path.suffix in _SPLIT_FORMATS and (rest.startswith((".", "-", "_"))):
            found.append(path)
    return found


class HubCopySource(CorpusSource):
    """A local copy of a registered Hugging Face corpus, in the dataset's own hub layout.

    Reads the split and field of the first hub spec whose field is in the files, so a copy of
    `tau/scrolls` gov_report (field `input`) and one of `ccdv/govreport-summarization`
    (field `report`) both work; document ids are `<split>/<row index>` exactly as on the hub.
    """

    def __init__(self, hub: HFDatasetSource, folder: Path):
        self.name = hub.name
        self.hub = hub
        self.folder = folder

    def describe(self) -> str:
        """One-line description."""
        return f"local copy of {self.name!r} in {self.folder} ({self.hub.describe()})"

    def _located(self) -> tuple[HFDatasetSpec, list[Path]]:
        splits = sorted({spec.split for spec in self.hub.specs})
        for spec in self.hub.specs:
            files = _split_files(self.folder, spec.split)
            if files:
                formats = {_SPLIT_FORMATS[f.suffix] for f in files}
                if len(formats) > 1:
                    raise CorpusError(f"local copy {self.folder} mixes json and parquet files for split "
                                      f"{spec.split!r}; keep one format per split.")
                return spec, files
        raise CorpusError(f"local copy of {self.name!r} in {self.folder} has no file for split "
                          f"{' or '.join(map(repr, splits))}; expected e.g. {self.folder}/{splits[0]}.jsonl or "
                          f"{splits[0]}-00000-of-00001.parquet in the dataset's hub layout.")

    def identity(self, text_field: str | None = None) -> str:
        """Identity: the hub spec read, the field, and every file's path, size and mtime."""
        spec, files = self._located()
        listed = _files_identity([(path.name, path) for path in files])
        return f"hubcopy\t{self.name}\t{spec.split}\t{text_field or spec.field}\n{listed}"

    def documents(self, text_field: str | None = None) -> Iterator[Document]:
        """Load the files with the `datasets` json/parquet builder and yield one document per row."""
        spec, files = self._located()
        dataset = _read_with_builder(_SPLIT_FORMATS[files[0].suffix], files, f"the local copy of {self.name!r}")
        candidates = [text_field] if text_field else [s.field for s in self.hub.specs if s.split == spec.split]
        field = next((f for f in candidates if f in dataset.column_names), None)
        if field is None:
            names = ", ".join(repr(c) for c in dataset.column_names)
            raise CorpusError(f"the local copy of {self.name!r} in {self.folder} has no field "
                              f"{' or '.join(map(repr, candidates))} (the hub layout's); fields present: {names}.")
        for row, value in enumerate(_column_values(dataset, field)):
            if not isinstance(value, str):
                raise CorpusError(f"field {field!r} of row {row} in {self.folder} is not text.")
            yield Document(f"{spec.split}/{row}", value)

    def stored_token_ids(self) -> Iterator[tuple[str, object]] | None:
        import datasets  # lazy: ~1 s (with pyarrow), only for hub corpora

        spec, files = self._located()
        try:
            dataset = datasets.load_dataset(_SPLIT_FORMATS[files[0].suffix], data_files=[str(f) for f in files],
                                            split="train")
        except Exception as exc:  # noqa: BLE001 - as in documents
            raise CorpusError(f"could not read the local copy of {self.name!r} ({', '.join(map(str, files))}): "
                              f"{type(exc).__name__}") from exc
        return pretokenized_rows(dataset, spec.split)


# --------------------------------------------------------------------- registry

CORPORA: dict[str, CorpusSource] = {
    "govreport": HFDatasetSource(
        "govreport",
        [
            HFDatasetSpec("tau/scrolls", "gov_report", "test", "input"),
            HFDatasetSpec("ccdv/govreport-summarization", None, "test", "report"),
        ],
    ),
    "proofpile": HFDatasetSource("proofpile", [HFDatasetSpec("hoskinson-center/proof-pile", None, "test", "text")]),
    "pg19": HFDatasetSource("pg19", [HFDatasetSpec("emozilla/pg19-test", None, "test", "text")]),
    "coq-stdlib": CoqStdlibSource(),
    "debian-policy": DebianPolicySource(),
}


def available_corpora() -> list[str]:
    """Registered corpus names, sorted (`local:PATH` is accepted as well)."""
    return sorted(CORPORA)


def _local_source(spec: str) -> CorpusSource:
    """Build the source for a `local:PATH` corpus name."""
    raw = spec[len(LOCAL_PREFIX):]
    forms = "local:PATH must name a folder of .txt files, a .jsonl file or a .parquet file"
    if not raw:
        raise CorpusError(f"corpus name {spec!r} has an empty path; {forms}.")
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        raise CorpusError(f"local corpus path '{path}' does not exist; {forms}.")
    if path.is_dir():
        return TextFolderSource(path)
    if path.suffix == ".jsonl":
        return JsonlSource(path)
    if path.suffix == ".parquet":
        return ParquetSource(path)
    raise CorpusError(f"local corpus path '{path}' is neither a folder nor a .jsonl/.parquet file; {forms}.")


HF_PREFIX = "hf:"
_HF_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # OWNER/NAME, as the hub spells repo ids
_HF_PART = re.compile(r"\w[\w.-]*")  # a config or split name
HF_DEFAULT_SPLIT = "test"


def parse_hf_spec(spec: str) -> HFDatasetSpec:
    """The dataset named by `hf:OWNER/NAME`, `hf:OWNER/NAME:SPLIT` or `hf:OWNER/NAME:CONFIG:SPLIT`:
    split `test` unless given, no config unless given, text field `text`."""
    parts = spec[len(HF_PREFIX):].split(":")
    valid = (1 <= len(parts) <= 3 and _HF_REPO_ID.fullmatch(parts[0]) is not None
             and all(_HF_PART.fullmatch(p) for p in parts[1:]))
    if not valid:
        raise CorpusError(f"dataset {spec!r} is not hf:OWNER/NAME, hf:OWNER/NAME:SPLIT or "
                          "hf:OWNER/NAME:CONFIG:SPLIT (e.g. hf:emozilla/proofpile-test-tokenized-mistral:train).")
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) > 1 else HF_DEFAULT_SPLIT
    return HFDatasetSpec(parts[0], config, split, "text")


def _hf_label(spec: HFDatasetSpec) -> str:
    """The tables' name of an `hf:` dataset: its id, then `:CONFIG:SPLIT` with a config, else
    `:SPLIT` unless the split is `test`."""
    if spec.config is not None:
        return f"{spec.dataset_id}:{spec.config}:{spec.split}"
    return spec.dataset_id if spec.split == HF_DEFAULT_SPLIT else f"{spec.dataset_id}:{spec.split}"


def _hub_copy_source(spec: str) -> CorpusSource:
    """Build the source for a `NAME=DIR` corpus spec (a local copy of a hub corpus)."""
    name, _, raw = spec.partition("=")
    hub_names = sorted(n for n, s in CORPORA.items() if isinstance(s, HFDatasetSource))
    source = CORPORA.get(name)
    if not isinstance(source, HFDatasetSource):
        raise CorpusError(f"corpus spec {spec!r}: only a Hugging Face corpus ({', '.join(hub_names)}) takes a "
                          f"local copy as NAME=DIR; for other files use local:PATH.")
    folder = Path(raw).expanduser().resolve() if raw else None
    if folder is None or not folder.is_dir():
        raise CorpusError(f"corpus spec {spec!r}: {raw!r} is not a folder; give the folder holding the "
                          f"dataset's split files, e.g. {name}=DIR with DIR/test.jsonl.")
    return HubCopySource(source, folder)


def dataset_label(name: str) -> str:
    """The `dataset` column for a corpus spec: `proofpile` for `proofpile=DIR`, the dataset id for
    `hf:` (see `_hf_label`), else the spec itself."""
    if name.startswith(HF_PREFIX):
        return _hf_label(parse_hf_spec(name))
    if not name.startswith(LOCAL_PREFIX) and "=" in name:
        return name.partition("=")[0]
    return name


def get_corpus(name: str) -> CorpusSource:
    """Return the source for a registered name, a `NAME=DIR` local hub copy, an `hf:` hub dataset or a
    `local:PATH` spec."""
    if name.startswith(LOCAL_PREFIX):
        return _local_source(name)
    if name.startswith(HF_PREFIX):
        return HFDatasetSource(name, [parse_hf_spec(name)])
    if "=" in name:
        return _hub_copy_source(name)
    try:
        return CORPORA[name]
    except KeyError:
        valid = ", ".join(available_corpora())
        raise CorpusError(f"unknown corpus {name!r}; valid names are {valid}, hf:OWNER/NAME[:SPLIT] for a "
                          f"Hugging Face dataset, or local:PATH for a folder of .txt files, a .jsonl or a .parquet "
                          f"file.") from None


def _primed(documents: Iterator[Document]) -> Iterator[Document]:
    """Fetch the first document now so that setup errors surface at call time."""
    first = next(documents, None)
    if first is None:
        return iter(())
    return itertools.chain([first], documents)


def iter_documents(name: str, text_field: str | None = None) -> Iterator[Document]:
    """Iterate over a corpus' documents in source order.

    Raises `CorpusError` immediately (not on first `next`) for unknown names,
    missing paths or packages, missing fields and unreachable datasets.
    """
    return _primed(get_corpus(name).documents(text_field))


# ----------------------------------------------------------------- tokenization


def tokenizer_fingerprint(tokenizer) -> str:
    """Short sha256 of the tokenizer's backend JSON (fast) or class + vocab (slow tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    elif hasattr(tokenizer, "get_vocab"):
        vocab = sorted(tokenizer.get_vocab().items())
        payload = json.dumps([type(tokenizer).__name__, vocab], ensure_ascii=False)
    else:
        raise CorpusError(
            f"tokenizer of type {type(tokenizer).__name__} has neither backend_tokenizer nor get_vocab(); "
            "pass a Hugging Face tokenizer."
        )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens and without the too-long warning."""
    if callable(tokenizer):
        try:
            out = tokenizer(texts, add_special_tokens=False, verbose=False, return_attention_mask=False)
        except TypeError:  # tokenizer-like objects without HF's keyword arguments
            out = tokenizer(texts, add_special_tokens=False)
        return [list(ids) for ids in out["input_ids"]]
    return [list(tokenizer.encode(text, add_special_tokens=False)) for text in texts]


@dataclass
class _TokenTable:
    """All documents of a corpus as one flat id tensor plus offsets."""

    doc_ids: list[str]
    flat: torch.Tensor  # 1-D, int32 or int64
    offsets: torch.Tensor  # int64, len(doc_ids) + 1

    def length(self, i: int) -> int:
        """Token count of document `i`."""
        return int(self.offsets[i + 1] - self.offsets[i])

    def ids(self, i: int) -> torch.Tensor:
        """Fresh int64 copy of document `i`'s ids."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.flat[start:end].to(torch.int64, copy=True)


def _tokenize_corpus(documents: Iterable[Document], tokenizer) -> _TokenTable:
    """Tokenize every document, batching calls to the tokenizer."""
    doc_ids: list[str] = []
    chunks: list[torch.Tensor] = []
    lengths: list[int] = []
    docs = iter(documents)
    while batch := list(itertools.islice(docs, _TOKENIZE_BATCH)):
        for doc, ids in zip(batch, _encode_batch(tokenizer, [d.text for d in batch])):
            doc_ids.append(doc.doc_id)
            chunks.append(torch.tensor(ids, dtype=torch.int64))
            lengths.append(len(ids))
    flat = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int64)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return _TokenTable(doc_ids, flat, offsets)


# ------------------------------------------------------------------------ cache


def _slug(text: str) -> str:
    """File-name-safe short form of `text`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "x"


def _corpus_key(name: str, source: CorpusSource, text_field: str | None) -> str:
    """`<name>-<field>-<hash of the source identity>`, safe as a file name."""
    short = "local_" + Path(name[len(LOCAL_PREFIX):]).name if name.startswith(LOCAL_PREFIX) else dataset_label(name)
    identity = f"v{_CACHE_FORMAT}\n{text_field}\n{source.identity(text_field)}"  # paths resolved
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    return f"{_slug(short)}-{_slug(text_field or 'default')}-{digest}"


def _cache_file(cache_dir: str | os.PathLike | None, key: str, fingerprint: str) -> Path:
    """Path of the token cache for a corpus key and tokenizer fingerprint."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "tokens" / f"{key}-{fingerprint}.pt"


def _load_cache(path: Path, fingerprint: str) -> _TokenTable | None:
    """Read a token cache, or None if absent, unreadable or inconsistent."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        table = _TokenTable(list(blob["doc_ids"]), blob["flat"], blob["offsets"])
        ok = (
            blob.get("format") == _CACHE_FORMAT
            and blob.get("tokenizer") == fingerprint
            and table.offsets.numel() == len(table.doc_ids) + 1
            and int(table.offsets[-1]) == table.flat.numel()
        )
    except Exception:  # noqa: BLE001 - a bad cache is just a miss
        return None
    return table if ok else None


def _save_cache(path: Path, table: _TokenTable, fingerprint: str) -> None:
    """Atomically write a token cache (temp file + os.replace); warn instead of failing."""
    flat = table.flat
    if flat.numel() == 0 or (int(flat.min()) >= -(2**31) and int(flat.max()) < 2**31):
        flat = flat.to(torch.int32)
    blob = {"format": _CACHE_FORMAT, "tokenizer": fingerprint, "doc_ids": table.doc_ids,
            "flat": flat, "offsets": table.offsets}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            torch.save(blob, fh)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"could not write token cache {path}: {exc}", RuntimeWarning, stacklevel=3)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _token_table(name: str, tokenizer, text_field: str | None, cache_dir) -> _TokenTable:
    """All documents' token ids, from the disk cache, else as stored in an `input_ids` column
    (`CorpusSource.stored_token_ids`), else by tokenizing the text (then cached)."""
    source = get_corpus(name)
    stored_path = _cache_file(cache_dir, _corpus_key(name, source, text_field), PRETOKENIZED)
    table = _load_cache(stored_path, PRETOKENIZED) if text_field in (None, PRETOKENIZED_FIELD) else None
    if table is not None:
        return table
    fingerprint = tokenizer_fingerprint(tokenizer)
    path = _cache_file(cache_dir, _corpus_key(name, source, text_field), fingerprint)
    table = _load_cache(path, fingerprint)
    if table is None:
        stored = source.stored_token_ids() if text_field in (None, PRETOKENIZED_FIELD) else None
        if stored is not None:
            table = _table_from_rows(stored)
            _save_cache(stored_path, table, PRETOKENIZED)
            return table
        table = _tokenize_corpus(_primed(source.documents(text_field)), tokenizer)
        _save_cache(path, table, fingerprint)
    return table


# ------------------------------------------------------------ pre-tokenized data

PRETOKENIZED_FIELD = "input_ids"
PRETOKENIZED = "pretokenized"  # the cache's "tokenizer fingerprint" of ids read as stored


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(0-based line index, text) of each non-blank line (messages name lines from 1), decoded line by
    line so that a line that is not UTF-8 is an error naming it (a text-mode file would fail on a
    read-ahead block instead)."""
    with path.open("rb") as fh:
        for index, raw in enumerate(fh):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc, f" line {index + 1}") from None
            if line.strip():
                yield index, line


def _table_from_rows(rows: Iterable[tuple[str, object]]) -> _TokenTable:
    """A token table from stored ids, each row checked to be a list of integers."""
    doc_ids, chunks = [], []
    for doc_id, ids in rows:
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise CorpusError(f"{PRETOKENIZED_FIELD!r} of document {doc_id} is not a list of integer token ids.")
        doc_ids.append(doc_id)
        chunks.append(torch.tensor(ids, dtype=torch.int64))
    if not doc_ids:
        raise CorpusError(f"the {PRETOKENIZED_FIELD!r} column holds no document.")
    lengths = torch.tensor([c.numel() for c in chunks], dtype=torch.int64)
    offsets = torch.zeros(len(chunks) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    return _TokenTable(doc_ids, torch.cat(chunks), offsets)


def check_token_ids(docs: Sequence[TokenizedDoc], vocab_size: int, corpus: str) -> None:
    """Every id must index the model's embedding: pre-tokenized ids made with another tokenizer
    would otherwise crash (or silently read another token) deep inside the forward pass."""
    for doc in docs:
        if doc.ids.numel() and (int(doc.ids.min()) < 0 or int(doc.ids.max()) >= vocab_size):
            bad = int(doc.ids.max()) if int(doc.ids.max()) >= vocab_size else int(doc.ids.min())
            raise CorpusError(f"document {doc.doc_id} of corpus {corpus!r} holds token id {bad}, outside the "
                              f"model's vocabulary 0…{vocab_size - 1}; its input_ids were made for another "
                              "tokenizer.")


# -------------------------------------------------------------------- selection


def default_min_tokens(protocol: str, lengths: Sequence[int], has_bos: bool) -> int:
    """The document filter when none is given: the truncated protocol keeps documents that fill the
    largest length (BOS + max(lengths) − 1 document tokens); the sliding one keeps every document."""
    return max(lengths) - int(has_bos) if protocol == "truncated" else 0


def _check_selection(min_tokens: int, n_docs: int | None, sample: int | None) -> None:
    """Validate the selection arguments of `load_corpus`."""
    if not isinstance(min_tokens, int) or min_tokens < 0:
        raise CorpusError(f"min_tokens={min_tokens!r} is invalid; it must be an integer >= 0.")
    for label, value in (("n_docs", n_docs), ("sample", sample)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise CorpusError(f"{label}={value!r} is invalid; it must be None or an integer >= 1.")


def _select(candidates: list[int], n_docs: int | None, sample: int | None, seed: int) -> list[int]:
    """First `n_docs` candidates, or a seeded sample of `sample` kept in source order."""
    if sample is not None:
        k = min(sample, len(candidates))
        return sorted(random.Random(seed).sample(candidates, k))
    return candidates if n_docs is None else candidates[:n_docs]


def load_corpus(
    name: str,
    tokenizer,
    *,
    min_tokens: int = 0,
    n_docs: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    text_field: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[TokenizedDoc]:
    """Tokenize a corpus (cached on disk) and select documents of at least `min_tokens` tokens.

    Ids are encoded without special tokens.  Selection: the first `n_docs`
    qualifying documents in source order (default: all of them); if `sample` is
    given it takes precedence, picking `sample` qualifying documents with
    `random.Random(seed)` (all of them if fewer qualify), returned in source order.
    """
    _check_selection(min_tokens, n_docs, sample)
    table = _token_table(name, tokenizer, text_field, cache_dir)
    lengths = [table.length(i) for i in range(len(table.doc_ids))]
    candidates = [i for i, n in enumerate(lengths) if n >= min_tokens]
    if not candidates:
        longest = max(lengths, default=0)
        raise CorpusError(
            f"no document of corpus {name!r} has min_tokens={min_tokens} tokens: it has {len(lengths)} "
            f"documents and the longest has {longest} tokens."
        )
    return [TokenizedDoc(table.doc_ids[i], table.ids(i)) for i in _select(candidates, n_docs, sample, seed)]
