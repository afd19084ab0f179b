"""The engine protocols over model servers (vLLM's OpenAI-compatible API).

`client` speaks HTTP (retries, back-off, several servers per model), `model`
is the language model, `reward` the reward model served as a pooling model,
and `checks` what `doctor` and the runtime verify before a search starts.
"""
