"""The Triton-layout model repository: model cards, config.pbtxt parsing, offline checks."""
