"""A load generator for OpenAI- and Ollama-dialect endpoints (``enginehouse bench``).

targets   target parsing and the two streaming chat clients
workload  synthetic prompts (token-exact where a target tokenizes) and JSONL prompts
runner    concurrency sweeps and Poisson arrivals, targets interleaved round by round
stats     the metrics, as pure functions
report    terminal table, JSON and HTML; plot draws the figure (matplotlib, lazily)
engines   --engines: llama-server alone and behind enginehouse, started here
"""
