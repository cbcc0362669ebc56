"""CTC decoders. Every decoder maps log-probs (B, T, V) with lengths (B,) to a list of Hypothesis."""
