"""asr.text: LibriSpeech normalisation, character and SentencePiece tokenizers, blank = 0."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.text import (BLANK, CharTokenizer, SentencePieceTokenizer, TokenizerError, build_tokenizer, normalize,
                      tokenizer_from_state)


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "HELLO WORLD"),
    ("  many   spaces\tand\nlines  ", "MANY SPACES AND LINES"),
    ("café naïve Ångström", "CAFE NAIVE ANGSTROM"),
    ("Straße", "STRASSE"),
    ("\ufb01ne", "FINE"),  # the 'fi' ligature
    ("well-known twenty-one", "WELL KNOWN TWENTY ONE"),
    ("em\u2014dash", "EM DASH"),
    ("don't", "DON'T"),
    ("don\u2019t it`s", "DON'T IT'S"),
    ("'quoted' words", "QUOTED WORDS"),
    ("rock 'n' roll", "ROCK N ROLL"),
    ("the boys' toys", "THE BOYS TOYS"),
    ("say \"yes\"; or (no)?", "SAY YES OR NO"),
    ("3 dogs & 2 cats", "DOGS CATS"),
    ("ALREADY NORMAL", "ALREADY NORMAL"),
    ("...!?", ""),
    ("", ""),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalize_is_idempotent_and_in_the_alphabet(text):
    once = normalize(text)
    assert normalize(once) == once
    assert set(once) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
    assert "  " not in once and once == once.strip()


def test_char_tokenizer_vocabulary():
    tok = CharTokenizer()
    assert tok.tokens[BLANK] == "<blank>" and BLANK == 0
    assert tok.vocab_size == 29 == len(set(tok.tokens))
    assert tok.is_space(tok.encode(" ")[0]) and not tok.is_space(tok.encode("A")[0])


def test_char_round_trip():
    tok = CharTokenizer()
    text = "IT'S A TEST OF THE TOKENIZER"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert BLANK not in ids
    assert tok.decode(ids) == text


def test_char_decode_drops_blanks_and_collapses_spaces():
    tok = CharTokenizer()
    ids = [0] + tok.encode("AB") + [0, 1, 1, 0] + tok.encode("C") + [1]
    assert tok.decode(ids) == "AB C"


@pytest.mark.parametrize("bad", ["lower", "A1", "HI!", "\u00c9T\u00c9"])
def test_char_unknown_character_is_an_error_naming_it(bad):
    with pytest.raises(TokenizerError, match="not in the character vocabulary"):
        CharTokenizer().encode(bad)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_round_trip_of_any_normalised_text(text):
    tok = CharTokenizer()
    norm = normalize(text)
    ids = tok.encode(norm)
    assert all(0 < i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == norm


SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "all that glitters is not gold",
    "don't count your chickens before they hatch",
    "the early bird catches the worm",
    "actions speak louder than words",
    "beauty is in the eye of the beholder",
    "every cloud has a silver lining",
    "fortune favours the bold",
    "when in rome do as the romans do",
    "you can't judge a book by its cover",
    "the pen is mightier than the sword",
]


@pytest.fixture(scope="module")
def sp_tokenizer():
    return SentencePieceTokenizer.train([normalize(s) for s in SENTENCES * 3], vocab_size=60)


def test_sentencepiece_round_trips_normalised_sentences(sp_tokenizer):
    tok = sp_tokenizer
    assert tok.tokens[0] == "<blank>"
    assert tok.vocab_size == tok.sp.get_piece_size() + 1
    for s in SENTENCES + ["the bold fox saves the gold"]:
        norm = normalize(s)
        ids = tok.encode(norm)
        assert ids and BLANK not in ids
        assert all(0 < i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == norm
        # Word boundaries are visible to decoders: one word start per word.
        assert sum(tok.is_word_start(i) for i in ids) == len(norm.split())


def test_sentencepiece_decode_ignores_blanks(sp_tokenizer):
    ids = sp_tokenizer.encode("THE EARLY BIRD")
    assert sp_tokenizer.decode([0] + ids[:1] + [0, 0] + ids[1:] + [0]) == "THE EARLY BIRD"


def test_tokenizer_state_round_trip(sp_tokenizer):
    again = tokenizer_from_state(sp_tokenizer.state())
    assert again.tokens == sp_tokenizer.tokens
    assert again.encode("EVERY CLOUD") == sp_tokenizer.encode("EVERY CLOUD")
    assert isinstance(tokenizer_from_state(CharTokenizer().state()), CharTokenizer)
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        tokenizer_from_state({"kind": "bpe"})


def test_build_tokenizer_by_name():
    assert isinstance(build_tokenizer("char"), CharTokenizer)
    tok = build_tokenizer("sentencepiece", [normalize(s) for s in SENTENCES], vocab_size=40, model_type="bpe")
    assert tok.decode(tok.encode("ALL THAT GLITTERS")) == "ALL THAT GLITTERS"
    with pytest.raises(TokenizerError, match="wordpiece"):
        build_tokenizer("wordpiece")
