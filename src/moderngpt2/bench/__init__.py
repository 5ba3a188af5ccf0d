"""Speed benchmarks (`moderngpt2 bench train|generate|pretokenize`): what they measure and how.

`train` and `generate` compare ModernGPT2 with transformers' own models at identical shapes; `pretokenize`
measures the data pipeline.
"""
