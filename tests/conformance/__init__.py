"""The conformance suite: each behaviour of a call written once, run over every route."""
