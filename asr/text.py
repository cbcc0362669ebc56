"""Text normalisation and tokenizers (characters, SentencePiece units). Blank is token 0.

Every tokenizer has ``tokens`` (id -> string, ``tokens[0] == "<blank>"``), ``encode``, ``decode``,
``state()`` for the model package, and ``word_sep``: how words are marked in its units. For
characters it is the space token ``"|"``; for SentencePiece it is the ``"▁"`` prefix of a
word-initial piece. Decoders use ``is_word_start`` / ``is_space`` to find word boundaries.
"""
from __future__ import annotations

import io
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Protocol

BLANK = 0

_NOT_ALLOWED = re.compile(r"[^A-Z' ]+")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """The LibriSpeech convention: upper case, letters A-Z and apostrophes, single spaces.

    Accents are folded (``café`` -> ``CAFE``); hyphens and other punctuation become spaces;
    apostrophes not inside a word are dropped.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.upper().replace("\u2019", "'").replace("`", "'")
    text = _NOT_ALLOWED.sub(" ", text)
    words = [w.strip("'") for w in _SPACES.split(text)]
    return " ".join(w for w in words if w)


class Tokenizer(Protocol):
    kind: str
    tokens: list[str]

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def is_word_start(self, token_id: int) -> bool: ...
    def is_space(self, token_id: int) -> bool: ...
    def state(self) -> dict: ...


class TokenizerError(ValueError):
    pass


class CharTokenizer:
    """Characters of normalised text; ``"|"`` is the word separator."""

    kind = "char"
    SPACE = "|"

    def __init__(self) -> None:
        self.tokens = ["<blank>", self.SPACE, "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self._index[" "] = self._index[self.SPACE]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Normalised text -> ids; a character outside the vocabulary is an error."""
        try:
            return [self._index[c] for c in text]
        except KeyError as e:
            raise TokenizerError(f"character {e.args[0]!r} is not in the character vocabulary (normalize the text first)") from None

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.tokens[i] for i in ids if i != BLANK).replace(self.SPACE, " ")
        return " ".join(text.split())

    def is_word_start(self, token_id: int) -> bool:
        return False  # words start after a space token

    def is_space(self, token_id: int) -> bool:
        return token_id == 1

    def state(self) -> dict:
        return {"kind": self.kind}


class SentencePieceTokenizer:
    """SentencePiece units; id = piece id + 1, so blank stays 0."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.tokens = ["<blank>"] + [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram") -> "SentencePieceTokenizer":
        """Train on normalised sentences; ``vocab_size`` excludes the blank."""
        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self.sp.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.sp.decode([i - 1 for i in ids if i != BLANK]).split())

    def is_word_start(self, token_id: int) -> bool:
        return token_id != BLANK and self.tokens[token_id].startswith("\u2581")

    def is_space(self, token_id: int) -> bool:
        return token_id != BLANK and self.tokens[token_id] == "\u2581"

    def state(self) -> dict:
        return {"kind": self.kind, "model_proto": self.model_proto}


def tokenizer_from_state(state: dict) -> Tokenizer:
    kind = state.get("kind")
    if kind == "char":
        return CharTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer(state["model_proto"])
    raise TokenizerError(f"unknown tokenizer kind {kind!r} (expected 'char' or 'sentencepiece')")


def load_sentencepiece(path: str | Path) -> SentencePieceTokenizer:
    """A SentencePiece model file (``*.model``, as SentencePiece's trainer or a recipe writes it)."""
    try:
        proto = Path(path).read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the SentencePiece model ({e.strerror or e})") from None
    try:
        return SentencePieceTokenizer(proto)
    except RuntimeError as e:  # sentencepiece reports a bad model proto as RuntimeError
        raise TokenizerError(f"{path}: not a SentencePiece model ({e})") from None


def build_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int = 256, model_type: str = "unigram") -> Tokenizer:
    """A tokenizer by name; SentencePiece is trained on ``texts`` (normalised)."""
    if kind == "char":
        return CharTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(texts, vocab_size, model_type)
    raise TokenizerError(f"unknown tokenizer kind {kind!r} (expected 'char' or 'sentencepiece')")


def read_lines(path: str | Path) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
