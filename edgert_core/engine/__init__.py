"""Runs a validated model on a kernel backend under a memory budget, walking an execution plan.

The engine's states are three classes, each made by the step before it::

    planned = Engine(model, backend).plan(context, strategy)    # idle -> planned: a plan is made
    ready = planned.prepare()                                   # planned -> ready: buffers prepared
    for token in generate_ids(ready, prompt_ids, max_tokens=32): ...  # only a ReadyEngine steps
    ready.close()                                               # every pool byte given back

Calling a step out of order is a type error (``Engine`` has no ``prepare``, and
:func:`edgert_core.generate.generate_ids` takes only an engine with ``forward``); at run time an
object that was consumed by its next step refuses further use with :class:`EngineStateError`.
Generation drives a :class:`ReadyEngine` from outside (:mod:`edgert_core.generate`); the engine
does not import it.

The package, one module per concept:

- :mod:`~edgert_core.engine.states`: the state machine (:class:`Engine`, :class:`PlannedEngine`,
  :class:`ReadyEngine`): the pool, the KV cache, resident weights, the forward pass.
- :mod:`~edgert_core.engine.stages`: the stage model (:class:`Piece`,
  :class:`Stage`, :class:`LoadedStage`) and the cutting of a plan into stages.
- :mod:`~edgert_core.engine.weights`: the backend's declared form of each tensor
  (:func:`tensor_form`), weight reading (:class:`WeightReader`) and the prepared-weights cache.
- :mod:`~edgert_core.engine.pipeline`: the prefetch pipeline (:class:`StagePipeline`) and timing
  (:class:`EngineTimes`).
- :mod:`~edgert_core.engine.tuning`: process tuning (:class:`ProcessTuning`): malloc, BLAS and
  kernel threads, the prefetch thread's priority, the peak-RSS reset; only with
  ``prepare(tune_process=True)``.

What counts against the budget
------------------------------
Every byte the run holds comes from one :class:`~edgert_core.memory.MemoryPool` whose budget is the
run's budget: the KV cache (sized from ``max_context``), resident groups and head, the *stage slots*
that streamed stages load into (one, or with prefetch one more per stage loaded ahead, each as large
as the largest stage), the loader's scratch buffer (file bytes waiting to be dequantized), and the
activations. numpy's temporaries cannot come from the pool, so the activations are an *accounting
block*: the pool maps (and never touches) the bytes the plan predicts for activations, minus what page
rounding and slice rounding cost elsewhere, so the pool's held bytes never exceed the plan's predicted
peak and the untouched block adds nothing to the RSS the operating system measures. The real
temporaries are of the same order (one prefill chunk's activations) and stay below it: the tests check
the OS's peak RSS over the baseline against the budget. The loader's own buffers (its scratch, the file
bytes of a tensor prepared whole, the chunk that writes the prepared-weights cache) are sized from the
room the plan leaves and come out of the activations' share (see :meth:`ReadyEngine._allocate`); only
when that share is smaller than one tensor prepared whole (a toy model with a tiny context) does the
pool hold more than the predicted peak, by at most that difference.

Raise, never wait
-----------------
Every pool allocation raises :class:`~edgert_core.MemoryPoolError` when it does not fit: a plan that
fits never runs out, so running out is a bug or a wrong plan. All of a run's memory is allocated when
the engine gets ready; streaming then only moves stages in and out of the slots. The prefetch thread
starts a load only when a slot is free (the main thread gives a stage's slot back before it takes the
next stage), so it never waits for memory either.

Walking the plan
----------------
Per forward pass (a prefill chunk or one decode token): token embeddings are looked up by row (from
the resident head when it is the tied table, otherwise read row by row from the file), then each
group runs: a resident group from memory; a streamed group stage by stage, each stage loaded into a
slot, its block parts computed (:meth:`Transformer.run_parts`, which carries the hidden state and the
MLP's inner activation from stage to stage) and its slot given back. The plan's ``stage_bytes`` cuts a
streamed group into stages between block parts (0: the group is one stage). Then the head: resident,
or row slices of at most ``plan.head_slice_bytes``, one stage each. With ``plan.prefetch`` one
background thread (with process tuning at a lower CPU priority than the compute) loads up to
:data:`~edgert_core.plan.PREFETCH_DEPTH` stages ahead in order, wrapping from the last head slice to
the next token's first stage. Its exceptions surface in the main thread when the stage is taken, and
:meth:`ReadyEngine.close` joins it.

Where weights come from
-----------------------
See :mod:`edgert_core.weight_cache`: the backend's prepared bytes from the prepared-weights cache,
or the model file, read straight into the pool buffer when the prepared form is the file's bytes and
otherwise read through the scratch buffer and prepared (dequantized) into the pool buffer row chunk by
row chunk. All reads are positional reads (no mapping of the model file).
"""

from __future__ import annotations

from edgert_core.backends.base import TensorForm
from edgert_core.engine.pipeline import EngineTimes, StagePipeline
from edgert_core.engine.stages import LoadedStage, Piece, Stage
from edgert_core.engine.states import Engine, EngineStateError, PlannedEngine, ReadyEngine
from edgert_core.engine.tuning import PREFETCH_NICE, ProcessTuning
from edgert_core.engine.weights import (
    BUILD_CHUNK_BYTES,
    SCRATCH_BYTES,
    WeightReader,
    WeightSource,
    tensor_form,
)

__all__ = [
    "BUILD_CHUNK_BYTES",
    "PREFETCH_NICE",
    "SCRATCH_BYTES",
    "Engine",
    "EngineStateError",
    "EngineTimes",
    "LoadedStage",
    "Piece",
    "PlannedEngine",
    "ProcessTuning",
    "ReadyEngine",
    "Stage",
    "StagePipeline",
    "TensorForm",
    "WeightReader",
    "WeightSource",
    "tensor_form",
]
