"""`specs-local serve`: the search behind an OpenAI-compatible HTTP API.

One more reader of the event stream: a request becomes one `app.search.run`
on the models loaded at start, and its events become a chat completion
(accepted steps as `reasoning_content`, the final step as `content`, the
run's stats as a `specs` object).

- `protocol.py`  the OpenAI wire format: the request, error objects, bodies and chunks
- `reply.py`     events -> reasoning deltas, the answer, finish reason and stats
- `worker.py`    the one search thread and its bounded queue
- `app.py`       the ASGI app: routes, API key, body limit, disconnects
"""
