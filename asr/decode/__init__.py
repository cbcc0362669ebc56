"""CTC decoders. Every decoder maps log-probs (B, T, V) with lengths (B,) to a list of Hypothesis."""
from __future__ import annotations

from asr.decode.types import Hypothesis
from asr.text import Tokenizer

DECODERS = ("greedy", "beam", "beam-gpu")


def build_decoder(name: str, tokenizer: Tokenizer, lm_path: str | None = None, beam_size: int = 10,
                  alpha: float = 0.5, beta: float = 1.0, device: str = "cpu", num_workers: int = 0, **kw):
    """A decoder by name: ``"greedy"``, ``"beam"`` (CPU prefix beam search, ``num_workers``
    processes) or ``"beam-gpu"`` (batched torch beam search on ``device``). ``lm_path`` is an ARPA
    word LM fused with weight ``alpha`` and word bonus ``beta``; ``kw`` go to the decoder
    (``token_top_k``, ``token_min_logp``, ``beam_threshold``, ``unk_penalty``)."""
    if name == "greedy":
        if lm_path is not None:
            raise ValueError("the greedy decoder takes no LM; use --decoder beam (or beam-gpu) with an LM")
        if kw:
            raise ValueError(f"the greedy decoder takes no options; got {sorted(kw)}")
        from asr.decode.greedy import GreedyDecoder

        return GreedyDecoder(tokenizer)
    if name == "beam":
        from asr.decode.beam import BeamSearchDecoder

        return BeamSearchDecoder(tokenizer, lm_path, beam_size=beam_size, alpha=alpha, beta=beta,
                                 num_workers=num_workers, **kw)
    if name == "beam-gpu":
        from asr.decode.batched import BatchedBeamSearchDecoder

        return BatchedBeamSearchDecoder(tokenizer, lm_path, beam_size=beam_size, alpha=alpha, beta=beta,
                                        device=device, **kw)
    raise ValueError(f"unknown decoder {name!r}; expected one of {', '.join(DECODERS)}")


__all__ = ["DECODERS", "Hypothesis", "build_decoder"]
