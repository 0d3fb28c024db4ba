"""The server's Prometheus metrics, in a registry of its own (two apps in one process keep theirs
apart): requests by endpoint and status, tokens, generation latency and time to first token,
queue depth, the engine's pool bytes and the process's OS-measured RSS."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from edgert_core.memory.rss import current_rss_bytes

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric of one server. The gauges given as callables are read when scraped."""

    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int],
                 pool_bytes: Callable[[], int], baseline_bytes: Callable[[], int],
                 budget_bytes: int | None) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("edgert_requests", "HTTP requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.rejected = Counter("edgert_rejected_requests",
                                "Generation requests refused before queueing, by reason.",
                                ["reason"], registry=r)
        self.finished = Counter("edgert_generations",
                                "Generations ended, by finish reason (stop, length, cancelled, error).",
                                ["reason"], registry=r)
        self.prompt_tokens = Counter("edgert_prompt_tokens", "Prompt tokens of the generations run.",
                                     registry=r)
        self.generated_tokens = Counter("edgert_generated_tokens", "Tokens generated.", registry=r)
        self.latency = Histogram("edgert_request_latency_seconds",
                                 "From a generation request's arrival to its last token.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("edgert_time_to_first_token_seconds",
                              "From a generation request's arrival to its first generated token "
                              "(queue wait and prefill included).", buckets=TTFT_BUCKETS, registry=r)
        Gauge("edgert_queue_depth", "Requests waiting for the engine.",
              registry=r).set_function(queue_depth)
        Gauge("edgert_requests_running", "Generations on the engine now (0 or 1).",
              registry=r).set_function(running)
        Gauge("edgert_pool_held_bytes", "Bytes the engine's memory pool holds now.",
              registry=r).set_function(pool_bytes)
        Gauge("edgert_process_resident_memory_bytes", "The process's resident set size (OS-measured).",
              registry=r).set_function(current_rss_bytes)
        Gauge("edgert_engine_baseline_resident_memory_bytes",
              "The process's RSS just before the engine read its first weight: the memory budget "
              "bounds the RSS over this.", registry=r).set_function(baseline_bytes)
        if budget_bytes is not None:
            Gauge("edgert_memory_budget_bytes", "The engine's memory budget.",
                  registry=r).set(budget_bytes)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds (Linux)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
