"""ARPA n-gram language models: read, write, and score with backoff.

An ARPA file stores log10 probabilities and log10 backoff weights. ``NgramLM.logprob10`` answers in
log10 (the file's unit); ``NgramLM.logprob`` and ``NgramLM.score`` answer in natural log, the unit
the decoders add to acoustic log-probs.

Scoring follows the usual backoff rule: p(w | h1..hk) is the stored n-gram probability when
``h1..hk w`` is in the model, else bow(h1..hk) * p(w | h2..hk). A word outside the vocabulary
scores as ``<unk>`` (or -100 in log10, KenLM's value, when the model has no ``<unk>``).
"""
from __future__ import annotations

import gzip
import io
import math
from pathlib import Path
from typing import Iterable, Iterator, Sequence

LOG10 = math.log(10.0)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
UNK_LOG10 = -100.0  # p(<unk>) for a model that lists no <unk>, as KenLM does
NEVER_LOG10 = -99.0  # the conventional unigram log10 p(<s>): <s> is never predicted


class ArpaError(ValueError):
    pass


class NgramLM:
    """A backoff word n-gram model held in memory.

    ``probs[n-1]`` maps an n-gram (tuple of n word ids) to its log10 probability; ``backoffs[n-1]``
    maps an n-gram to its log10 backoff weight, listing only non-zero weights.

    For decoding there is a state API like KenLM's: a state is an int naming the context (the last
    up to order-1 words, cut to the longest suffix the model knows), and ``score(state, word_id)``
    returns (natural-log probability, next state), cached per (state, word).
    """

    def __init__(self, order: int, vocab: Sequence[str], probs: list[dict[tuple[int, ...], float]],
                 backoffs: list[dict[tuple[int, ...], float]]):
        if order < 1 or len(probs) != order or len(backoffs) != order:
            raise ArpaError(f"an order-{order} model needs {order} probability and backoff tables; got {len(probs)} and {len(backoffs)}")
        self.order = order
        self.vocab = list(vocab)
        self.word_id = {w: i for i, w in enumerate(self.vocab)}
        if len(self.word_id) != len(self.vocab):
            raise ArpaError("the vocabulary lists a word twice")
        self.probs = probs
        self.backoffs = backoffs
        self.bos_id = self.word_id.get(BOS, -1)
        self.eos_id = self.word_id.get(EOS, -1)
        self.unk_id = self.word_id.get(UNK, -1)
        self.unk_log10 = probs[0].get((self.unk_id,), UNK_LOG10) if self.unk_id >= 0 else UNK_LOG10
        self._states: list[tuple[int, ...]] = []
        self._state_id: dict[tuple[int, ...], int] = {}
        self._cache: dict[tuple[int, int], tuple[float, int]] = {}
        self.null_state = self._intern(())

    # --- plain queries -------------------------------------------------------------------
    def counts(self) -> list[int]:
        """Number of n-grams of each order, 1..order."""
        return [len(p) for p in self.probs]

    def words(self) -> list[str]:
        """Vocabulary words other than <s>, </s>, <unk>."""
        return [w for w in self.vocab if w not in (BOS, EOS, UNK)]

    def ids(self, words: Iterable[str]) -> list[int]:
        """Words -> ids; a word outside the vocabulary becomes the <unk> id (-1 when there is none)."""
        get = self.word_id.get
        return [get(w, self.unk_id) for w in words]

    def logprob10_ids(self, history: Sequence[int], word: int) -> float:
        """log10 p(word | history) with backoff; ids from ``ids``, history oldest first."""
        if word < 0:
            if self.unk_id < 0:
                return UNK_LOG10
            word = self.unk_id  # scored as <unk>, whose n-grams may depend on the history
        # (a negative start would keep too little: the last word only of a short history)
        history = tuple(history[max(0, len(history) - (self.order - 1)):]) if self.order > 1 else ()
        if any(h < 0 for h in history):
            # an unknown history word without <unk> in the model: only the part after it counts
            last_bad = max(i for i, h in enumerate(history) if h < 0)
            history = history[last_bad + 1:]
        bow = 0.0
        for start in range(len(history) + 1):
            ctx = history[start:]
            p = self.probs[len(ctx)].get(ctx + (word,))
            if p is not None:
                return bow + p
            if ctx:
                bow += self.backoffs[len(ctx) - 1].get(ctx, 0.0)
        return bow + self.unk_log10

    def logprob10(self, history: Sequence[str], word: str) -> float:
        """log10 p(word | history), words as strings, history oldest first."""
        return self.logprob10_ids(self.ids(history), self.ids([word])[0])

    def logprob(self, history: Sequence[str], word: str) -> float:
        """Natural-log p(word | history)."""
        return self.logprob10(history, word) * LOG10

    def sentence_logprob10(self, words: Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """log10 probability of a sentence, with <s> as the first history and </s> predicted last."""
        ids = self.ids(words) + ([self.eos_id] if eos else [])
        hist = [self.bos_id] if bos else []
        total = 0.0
        for w in ids:
            total += self.logprob10_ids(hist, w)
            hist.append(w)
        return total

    # --- decoding state API --------------------------------------------------------------
    def _intern(self, ctx: tuple[int, ...]) -> int:
        sid = self._state_id.get(ctx)
        if sid is None:
            sid = len(self._states)
            self._states.append(ctx)
            self._state_id[ctx] = sid
        return sid

    def _trim(self, ctx: tuple[int, ...]) -> tuple[int, ...]:
        """Cut a context to its longest suffix that is an n-gram of the model: nothing longer can
        change a later probability, and sharing states keeps the score cache small."""
        ctx = ctx[max(0, len(ctx) - (self.order - 1)):] if self.order > 1 else ()
        for start in range(len(ctx)):
            suffix = ctx[start:]
            if suffix in self.probs[len(suffix) - 1]:
                return suffix
        return ()

    def begin_state(self) -> int:
        """The state after <s> (the start of a sentence)."""
        return self._intern(self._trim((self.bos_id,))) if self.bos_id >= 0 else self.null_state

    def state_words(self, state: int) -> tuple[int, ...]:
        return self._states[state]

    def score(self, state: int, word: int) -> tuple[float, int]:
        """Natural-log p(word | state) and the next state; ``word`` is an id (-1 or <unk> for OOV)."""
        key = (state, word)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        ctx = self._states[state]
        lp = self.logprob10_ids(ctx, word) * LOG10
        if word < 0:
            nxt = self.null_state  # an unknown word without <unk> resets the context
        else:
            nxt = self._intern(self._trim(ctx + (word,)))
        hit = (lp, nxt)
        self._cache[key] = hit
        return hit

    def eos_score(self, state: int) -> float:
        """Natural-log p(</s> | state)."""
        if self.eos_id < 0:
            return 0.0
        return self.score(state, self.eos_id)[0]

    # --- output --------------------------------------------------------------------------
    def ngrams(self, n: int) -> Iterator[tuple[tuple[str, ...], float, float]]:
        """(words, log10 prob, log10 backoff) for every n-gram of order n, sorted by words."""
        vocab = self.vocab
        bows = self.backoffs[n - 1]
        rows = [(tuple(vocab[i] for i in key), p, bows.get(key, 0.0)) for key, p in self.probs[n - 1].items()]
        rows.sort(key=lambda r: r[0])
        return iter(rows)


def _open_text(path: Path, mode: str, gz: bool | None = None) -> io.TextIOBase:
    if gz if gz is not None else path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file; binary or broken gzip input is an ArpaError naming it."""
    try:
        with _open_text(path, "r") as f:
            yield from enumerate(f, 1)
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise ArpaError(f"{path}: not an ARPA text file ({e})") from None


def read_arpa(path: str | Path) -> NgramLM:
    """Load an ARPA file (``.gz`` too); malformed input is an ArpaError naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise ArpaError(f"{path}: no such ARPA file")
    declared: dict[int, int] = {}
    vocab: list[str] = []
    word_id: dict[str, int] = {}
    probs: list[dict[tuple[int, ...], float]] = []
    backoffs: list[dict[tuple[int, ...], float]] = []
    section = "preamble"  # preamble -> data -> ngrams of order n -> end
    n = 0

    def bad(lineno: int, why: str) -> ArpaError:
        return ArpaError(f"malformed ARPA line {lineno} in {path}: {why}")

    for lineno, raw in _numbered_lines(path):
        line = raw.strip()
        if not line:
            continue
        if section == "preamble":
            if line == "\\data\\":
                section = "data"
            continue
        if line == "\\end\\":
            section = "end"
            break
        if line.startswith("\\") and line.endswith("-grams:"):
            try:
                n = int(line[1:-len("-grams:")])
            except ValueError:
                raise bad(lineno, f"bad section header {line!r}") from None
            if n != len(probs) + 1:
                raise bad(lineno, f"section for {n}-grams where {len(probs) + 1}-grams were expected")
            if n not in declared:
                raise bad(lineno, f"{n}-grams are not declared in the \\data\\ header")
            probs.append({})
            backoffs.append({})
            section = "ngrams"
            continue
        if section == "data":
            if not line.startswith("ngram "):
                raise bad(lineno, f"expected 'ngram N=COUNT' in the \\data\\ header, got {line!r}")
            try:
                k, v = line[len("ngram "):].split("=")
                declared[int(k)] = int(v)
            except ValueError:
                raise bad(lineno, f"expected 'ngram N=COUNT', got {line!r}") from None
            continue
        fields = line.split()
        if len(fields) not in (n + 1, n + 2):
            raise bad(lineno, f"a {n}-gram line needs a log10 prob, {n} words and an optional backoff; got {len(fields)} fields")
        try:
            p = float(fields[0])
            bow = float(fields[n + 1]) if len(fields) == n + 2 else 0.0
        except ValueError:
            raise bad(lineno, f"not a number in {line!r}") from None
        if math.isnan(p) or p > 1e-6 or math.isnan(bow):
            raise bad(lineno, f"log10 probability must be <= 0, got {fields[0]}")
        words = fields[1:n + 1]
        if n == 1:
            w = words[0]
            if w in word_id:
                raise bad(lineno, f"unigram {w!r} listed twice")
            word_id[w] = len(vocab)
            vocab.append(w)
            key: tuple[int, ...] = (word_id[w],)
        else:
            try:
                key = tuple(word_id[w] for w in words)
            except KeyError as e:
                raise bad(lineno, f"word {e.args[0]!r} is not among the unigrams") from None
        probs[n - 1][key] = p
        if bow != 0.0:
            backoffs[n - 1][key] = bow
    if section == "preamble":
        raise ArpaError(f"{path}: not an ARPA file (no \\data\\ line)")
    if section != "end":
        raise ArpaError(f"{path}: truncated ARPA file (no \\end\\ line)")
    if not probs:
        raise ArpaError(f"{path}: ARPA file has no n-gram sections")
    for k, count in declared.items():
        if k > len(probs):
            raise ArpaError(f"{path}: header declares {count} {k}-grams but the file has no {k}-gram section")
        if len(probs[k - 1]) != count:
            raise ArpaError(f"{path}: header declares {count} {k}-grams but the file lists {len(probs[k - 1])}")
    return NgramLM(len(probs), vocab, probs, backoffs)


def _fmt(x: float) -> str:
    return f"{x:.8g}"


def write_arpa(lm: NgramLM, path: str | Path) -> None:
    """Write ``lm`` as an ARPA file (gzip when the name ends in ``.gz``), n-grams sorted by words."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with _open_text(tmp, "w", gz=path.suffix == ".gz") as f:
        f.write("\n\\data\\\n")
        for n, c in enumerate(lm.counts(), 1):
            f.write(f"ngram {n}={c}\n")
        for n in range(1, lm.order + 1):
            f.write(f"\n\\{n}-grams:\n")
            for words, p, bow in lm.ngrams(n):
                if bow != 0.0 or (n < lm.order and words[-1] != EOS):
                    f.write(f"{_fmt(p)}\t{' '.join(words)}\t{_fmt(bow)}\n")
                else:
                    f.write(f"{_fmt(p)}\t{' '.join(words)}\n")
        f.write("\n\\end\\\n")
    tmp.replace(path)
