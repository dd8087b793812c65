"""Bounds on template size, output size, loop iterations and nesting depth."""

MAX_TEMPLATE_CHARS = 1 << 20
MAX_OUTPUT_CHARS = 16 << 20
MAX_ITERATIONS = 100_000
MAX_DEPTH = 64
