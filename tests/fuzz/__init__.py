"""Coverage-guided fuzzing of the parsers that read untrusted bytes (see README.md)."""
