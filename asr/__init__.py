"""asr: BiLSTM-CTC speech recognition, from audio files to WER."""

__version__ = "0.1.0"
