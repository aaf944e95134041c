"""Text corpora for language modelling: tokens, one dictionary, bptt batches.

Word level: the tokens of a line are its whitespace-separated words, then
``<eos>``. Character level: every character of the line, spaces included,
then ``<eos>`` as the line-end token. The dictionary is built over train,
valid and test (in that order of first appearance), as in the authors' code.
"""

import torch

from . import TEXT_CORPORA
from .errors import DataError
from .ptb import SPLITS, read_ptb_texts

#: Line-end token, at both levels.
EOS = "<eos>"


class Dictionary:
    """Token <-> id: ``word2idx[token]`` is the id, ``idx2word[id]`` the token."""

    def __init__(self):
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        """Id of ``word``, added with the next free id if new."""
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


def tokenize(text: str, char_level: bool) -> list[str]:
    """Tokens of ``text``, line by line, each line followed by :data:`EOS`.
    A final newline does not start an extra (empty) line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = []
    for line in lines:
        tokens.extend(line if char_level else line.split())
        tokens.append(EOS)
    return tokens


class Corpus:
    """A corpus split three ways, as 1-D int64 tensors of token ids.

    Attributes: ``dictionary`` (:class:`Dictionary`), ``train``, ``valid``,
    ``test`` (LongTensors ``(n_tokens,)``), ``char_level``.
    """

    def __init__(self, train_text: str, valid_text: str, test_text: str, *, char_level: bool):
        self.char_level = char_level
        self.dictionary = Dictionary()
        tokens = [tokenize(text, char_level) for text in (train_text, valid_text, test_text)]
        for split_tokens in tokens:
            for token in dict.fromkeys(split_tokens):  # distinct tokens, in order of appearance
                self.dictionary.add_word(token)
        word2idx = self.dictionary.word2idx
        self.train, self.valid, self.test = (
            torch.tensor([word2idx[t] for t in split_tokens], dtype=torch.int64) for split_tokens in tokens
        )


def pydoc_texts() -> tuple[str, str, str]:
    """Python's pydoc topic help (module ``pydoc_data.topics``, sorted by topic),
    split 80 / 10 / 10 % by position, at line boundaries."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DataError(
            "this Python installation lacks the standard module pydoc_data.topics "
            "(some distributions ship it separately); use the 'ptb' corpus"
        ) from None
    lines = "\n".join(topics[key] for key in sorted(topics)).split("\n")
    a, b = int(0.8 * len(lines)), int(0.9 * len(lines))
    return tuple("\n".join(part) + "\n" for part in (lines[:a], lines[a:b], lines[b:]))


def get_corpus(name: str, data_path, *, char_level: bool, download: bool = True) -> Corpus:
    """The corpus ``name`` (one of :data:`TEXT_CORPORA`) at word or character level.

    ``'ptb'``: the folder ``data_path`` holds the three files (see
    :func:`data.ptb.read_ptb_texts`; downloaded when missing and ``download``).
    ``'pydoc'``: no file needed, ``data_path`` is ignored.
    Raises :class:`DataError` when the files are missing or corrupted.
    """
    if name not in TEXT_CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid: {', '.join(TEXT_CORPORA)}")
    if name == "pydoc":
        return Corpus(*pydoc_texts(), char_level=char_level)
    if data_path is None:
        raise ValueError("get_corpus: the 'ptb' corpus needs data_path, the folder of its files")
    texts = read_ptb_texts(data_path, download=download)
    return Corpus(*(texts[split] for split in SPLITS), char_level=char_level)


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut the token stream ``data`` ``(n,)`` into ``batch_size`` parallel streams:
    returns ``(n // batch_size, batch_size)``, column ``j`` being the ``j``-th
    contiguous chunk; the last ``n % batch_size`` tokens are dropped."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batchify: batch_size must be a positive integer, got {batch_size!r}")
    n_steps = data.shape[0] // batch_size
    if n_steps < 2:
        raise ValueError(
            f"batchify: {data.shape[0]} tokens are too few for {batch_size} streams "
            f"(at least 2 tokens per stream are needed)"
        )
    return data[: n_steps * batch_size].view(batch_size, n_steps).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int):
    """The bptt chunk of ``source`` ``(n_steps, batch)`` starting at step ``i``.

    Returns ``input`` ``(seq_len, batch)`` = rows ``i .. i+seq_len-1`` and
    ``target`` ``(seq_len * batch,)`` = rows ``i+1 .. i+seq_len`` flattened
    (the next token of each input token), where
    ``seq_len = min(bptt, n_steps - 1 - i)``.
    """
    if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt < 1:
        raise ValueError(f"get_batch: bptt must be a positive integer, got {bptt!r}")
    seq_len = min(bptt, source.shape[0] - 1 - i)
    if i < 0 or seq_len < 1:
        raise ValueError(f"get_batch: start step i must be in [0, {source.shape[0] - 2}], got {i!r}")
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)
