"""Word n-gram language models: a pure-Python modified Kneser-Ney builder, ARPA I/O, and alpha/beta tuning."""
from asr.lm.arpa import ArpaError, NgramLM, read_arpa, write_arpa
from asr.lm.build import LMBuildError, build_arpa, build_lm

__all__ = ["ArpaError", "LMBuildError", "NgramLM", "build_arpa", "build_lm", "read_arpa", "write_arpa"]
