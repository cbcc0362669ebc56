"""espeak-ng through its shared library (libespeak-ng, installed with Debian's espeak-ng).

Each run of the ``espeak-ng`` program spends ~9 ms loading its voice data, two thirds of its time
on a typical sentence; the library loads a voice once per process and again only when the voice
changes, and returns the same samples as the program (tests/test_librispeech.py).
"""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flag values from speak_lib.h
_SYNCHRONOUS = 2
_RATE, _PITCH = 1, 3
_POS_CHARACTER = 1
_CHARS_UTF8 = 1

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _VoiceSpec(ctypes.Structure):
    """speak_lib.h's espeak_VOICE: only ``languages`` is set, as the espeak-ng program does."""

    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


class Espeak:
    """The espeak-ng engine of this process (the library keeps global state: one per process)."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1")
        self.sample_rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, None, 0)
        if self.sample_rate <= 0:
            raise OSError("libespeak-ng: initialisation failed (espeak-ng-data missing?)")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # referenced here so it outlives every call
        self.lib.espeak_SetSynthCallback(self._callback)
        self.voice = ""

    def _collect(self, wav, n: int, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: go on synthesizing

    def _set_voice(self, name: str) -> None:
        if name == self.voice:
            return
        self.voice = ""
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            # Not a voice name: a language with a variant ("en-gb+f2"), as the program falls back to.
            spec = _VoiceSpec(languages=name.encode())
            if self.lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != 0:
                raise ValueError(f"espeak-ng has no voice {name!r}")
        self.voice = name

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """``text`` in ``voice`` at ``rate`` words a minute and ``pitch`` 0-99 -> int16 samples (S,)
        at ``self.sample_rate``; the program's ``-v voice -s rate -p pitch``."""
        self._set_voice(voice)
        self.lib.espeak_SetParameter(_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self._chunks = []
        data = text.encode()
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"libespeak-ng: synthesis failed (error {err})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


_engine: Espeak | None = None
_tried = False


def engine() -> Espeak | None:
    """This process's engine, started on first use; None when libespeak-ng cannot be loaded.
    (A forked worker inherits a started engine whole: synchronous mode runs no threads.)"""
    global _engine, _tried
    if not _tried:
        _tried = True
        try:
            _engine = Espeak()
        except (OSError, AttributeError):
            _engine = None
    return _engine
