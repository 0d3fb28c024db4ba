"""Beyond one device: a model's layers as a pipeline of stages on Dask workers.

How a user runs it: a Dask scheduler (``dask scheduler``) and, on each device, a stock worker
(``dask worker tcp://HOST:8786 --memory-limit 3GiB``) with edge-rt installed; then
``edge-rt run --cluster tcp://HOST:8786 --model ...`` (or ``load_model(..., cluster=...)``).
``--cluster local:N`` starts a LocalCluster of N worker processes on loopback. Dask comes with the
``cluster`` extra (``pip install 'edgert-core[cluster]'``).

Planning (:mod:`~edgert_core.cluster.pipeline`): every worker first reports its Dask memory limit,
its RSS and whether it can open the model from its own disk (the same path, or a pulled name); a
worker without it is an error naming the worker and the path, before any work. A worker's budget
is ``--worker-budget`` or its memory limit less its RSS and a margin for Dask (10 %, at least
32 MiB). Each worker's speed is measured too (float32 matrix-vector products over 64 MiB, one
worker at a time). The layers are cut into contiguous stages in proportion to the budgets, weighted
by speed where the workers differ by 1.5x or more and the budgets allow it
(:mod:`~edgert_core.cluster.split`); the largest budget takes the last stage, which holds the head.
Each worker plans its stage with the run's strategy under its own budget, so a worker may still
stream its layers. The token embeddings are looked up on the
first stage and the head runs on the last; the client holds the tokenizer and the sampler.

Data paths (:mod:`~edgert_core.cluster.stage`): each stage is a Dask actor; the client calls the
first, each stage calls the next with its activations (worker to worker), and the logits come back
up the chain. KV caches stay on their workers.

Dask's memory thresholds: a stage's memory is its engine's pool, not Dask data, so the worker's
target, spill and pause thresholds are turned off on every worker when a run connects (spilling
has nothing to move, and a pause would stop the pipeline); the nanny's terminate threshold (95 %
of the limit) stays, and the default budget leaves a 10 % margin below the limit, so a worker that
stays within its edge-rt budget is neither paused nor killed.

Faults: a worker lost mid-generation is seen as a failed call and the scheduler no longer listing
it; the run re-plans onto the live workers, prefills the tokens so far again and goes on, or, when
they cannot hold the model, stops with the tokens so far and a
:class:`~edgert_core.errors.WorkerLostError` naming the lost worker and the memory its layers
needed. A scheduler or worker that does not answer at the start is a timeout error.
"""

from __future__ import annotations
