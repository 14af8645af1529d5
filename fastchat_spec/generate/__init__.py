"""The engine: every request goes propose -> verify -> accept -> commit.

- ``loop.py``: one engine loop per loaded model; admits requests into KV slots, batches their steps,
  frees slots at step boundaries (finished, stopped, cancelled).
- ``batch_step.py``: the greedy step for a block of slots, whole on the device (one CUDA graph).
- ``engine.py``: the host-driven step of one request (sampling, typical acceptance, Jacobi windows).
- ``slots.py`` / ``kv_cache.py``: KV storage; ``verify.py``: the base's forward over trees with 4D masks;
  ``accept.py``: acceptance rules; ``tree.py``: trees as data; ``proposers/``: one drafter per method.
- ``stream.py``: ``generate_stream`` with FastChat's contract; ``request.py``: request validation.
"""
