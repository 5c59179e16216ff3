"""A Ray pool of live evaluators: `evolve.backend: {kind: ray, actors: N, ...}`.

Each actor builds its fitness function once, from a picklable factory (`EvolveRunFitness`
rebuilds the run's own: the live model with host and every source's language tensors loaded
once, the materializer and the evaluator), then scores the candidates it is sent as genomes into
journal entries, exactly as the local backend does (`evaluate_candidate`). Whatever a run's
materializer is (parameter space, data-flow path, learned merge), the actor builds the one the
run would build locally, so every kind of candidate goes through the same pool.

Faults: an actor that dies while it scores a candidate (a crash, an out-of-memory kill, a lost
node) is replaced by a fresh one and its candidate is sent again; a candidate whose actor dies a
second time gets the worst fitness (`attempts` 2, the error says why) and the run goes on. Every
candidate yields exactly one entry, so the journal stays exact. Before any actor loads anything,
its memory (host model + cached language tensors + merge temporaries, from checkpoint headers)
is checked against `memory_per_actor_gb` and against what the cluster's nodes offer, and the
cluster's CPUs / GPUs against what the actors ask for.

Ray is an optional extra (`pip install vlmmerge[ray]`); nothing here imports it until a Ray
backend is built. Candidate and journal types are imported where they are used: this module's
`BackendConfig` is part of the evolve section (`vlmmerge.search.space`), which they depend on.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlmmerge.errors import RecipeError, VlmMergeError

if TYPE_CHECKING:
    from vlmmerge.search.candidates import Candidate, FitnessFn
    from vlmmerge.search.journal import JournalEntry
    from vlmmerge.search.space import SearchSpace

GIB = 1024**3


class BackendConfig(BaseModel):
    """`evolve.backend`: where candidates are scored."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # a running cluster ("auto", "ray://head:10001"); None: start one on this machine
    actors: int = Field(default=1, ge=1)
    cpus_per_actor: float = Field(default=1.0, gt=0)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    memory_per_actor_gb: float | None = Field(default=None, gt=0)  # refuse a run whose actors need more


# A picklable factory, called once in each actor: () -> fitness function (genome -> fitness, scores).
FitnessFactory = Callable[[], "FitnessFn"]


@dataclass
class EvolveRunFitness:
    """The fitness function an evolve run builds locally (`EvolveRun.fitness_fn`), rebuilt in an actor
    from the resolved recipe and the evolve section: same materializer, same evaluator, same seed."""

    template: Any  # vlmmerge.recipe.Recipe, model references resolved to folders
    config: Any  # vlmmerge.search.space.EvolveConfig

    def __call__(self) -> FitnessFn:
        from vlmmerge.search.evolve import EvolveRun

        return EvolveRun(self.template, self.config, Path(os.devnull), progress=False).fitness_fn()


class _Evaluator:
    """The actor: one fitness function, built once, scoring candidate after candidate."""

    def __init__(self, factory: FitnessFactory, space: SearchSpace, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.space = space
        self.fitness_fn = factory()

    def ready(self) -> int:
        return os.getpid()

    def evaluate(self, candidate: Candidate) -> JournalEntry:
        from vlmmerge.search.candidates import evaluate_candidate

        return evaluate_candidate(self.fitness_fn, self.space, candidate)


def check_fits(config: BackendConfig, memory_bytes: int | None, nodes: Sequence[dict[str, float]] | None = None) -> None:
    """Refuse, before anything is loaded, actors that need more memory than `memory_per_actor_gb` or
    than any node offers, or more actors than the cluster has CPUs / GPUs (or memory) for.
    `nodes`: the resources of each alive node (`ray.nodes()`), None to check the recipe limit only."""
    need = f"{memory_bytes / GIB:.3g} GiB" if memory_bytes is not None else None
    if memory_bytes is not None and config.memory_per_actor_gb is not None and memory_bytes > config.memory_per_actor_gb * GIB:
        raise RecipeError(f"evolve.backend.memory_per_actor_gb: one actor needs {need} (host model + cached "
                          f"language tensors of every source), over the limit of {config.memory_per_actor_gb} GiB")
    if nodes is None:
        return
    fits = 0
    for node in nodes:
        by_cpu = int(node.get("CPU", 0) // config.cpus_per_actor)
        by_gpu = int(node.get("GPU", 0) // config.gpus_per_actor) if config.gpus_per_actor else by_cpu
        by_memory = int(node.get("memory", 0) // memory_bytes) if memory_bytes else by_cpu
        fits += min(by_cpu, by_gpu, by_memory)
    if fits >= config.actors:
        return
    offered = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU / {n.get('memory', 0) / GIB:.3g} GiB"
                        for n in nodes)
    raise RecipeError(
        f"evolve.backend: {config.actors} actor(s) of {config.cpus_per_actor:g} CPU, {config.gpus_per_actor:g} GPU"
        + (f" and {need}" if need else "") + f" do not fit the Ray cluster (room for {fits}; nodes: {offered}); "
        "lower evolve.backend.actors or the resources per actor"
    )


class RayBackend:
    """Candidates of a population scored by a pool of Ray actors, yielded as they finish."""

    def __init__(self, factory: FitnessFactory, space: SearchSpace, config: BackendConfig,
                 memory_bytes: int | None = None):
        try:
            import ray
        except ImportError:
            raise VlmMergeError("evolve.backend.kind: ray needs Ray: pip install 'vlmmerge[ray]'") from None
        self.ray = ray
        self.space = space
        self.config = config
        self.memory_bytes = memory_bytes
        check_fits(config, memory_bytes)
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
        check_fits(config, memory_bytes, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        options: dict[str, Any] = {"num_cpus": config.cpus_per_actor, "num_gpus": config.gpus_per_actor,
                                   "max_restarts": 0, "max_task_retries": 0}
        if memory_bytes:
            options["memory"] = int(memory_bytes)
        self._actor_class = ray.remote(**options)(_Evaluator)
        self._factory_ref = ray.put(factory)
        self.replaced = 0  # actors that died and were replaced
        self.actors = [self._actor_class.remote(self._factory_ref, space, int(config.cpus_per_actor))
                       for _ in range(config.actors)]
        self._wait_ready(self.actors)

    def _wait_ready(self, actors: list[Any]) -> None:
        try:
            self.ray.get([actor.ready.remote() for actor in actors])
        except self.ray.exceptions.RayError as exc:
            self.close()
            raise VlmMergeError(f"evolve.backend: a Ray actor could not build its live model: {_cause(exc)}") from None

    def _replace(self, slot: int) -> None:
        """A fresh actor in a dead one's slot; it loads while the others work (calls queue until it is up)."""
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._actor_class.remote(self._factory_ref, self.space, int(self.config.cpus_per_actor))
        self.replaced += 1

    def evaluate_many(self, candidates: Sequence[Candidate]) -> Iterator[JournalEntry]:
        """One entry per candidate, in the order they finish; a dead actor's candidate is sent again."""
        ray = self.ray
        pending = deque(candidates)
        deaths: dict[tuple[str, int], int] = {}
        idle = list(range(len(self.actors)))
        running: dict[Any, tuple[int, Candidate]] = {}
        while pending or running:
            while pending and idle:
                slot, candidate = idle.pop(0), pending.popleft()
                running[self.actors[slot].evaluate.remote(candidate)] = (slot, candidate)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            slot, candidate = running.pop(ref)
            try:
                entry = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                if getattr(exc, "actor_init_failed", False):  # a replacement that could not load: not the candidate's fault
                    self.close()
                    raise VlmMergeError(f"evolve.backend: a Ray actor could not build its live model: {_cause(exc)}") from None
                key = (candidate.optimizer, candidate.index)
                deaths[key] = deaths.get(key, 0) + 1
                self._replace(slot)
                idle.append(slot)
                if deaths[key] < 2:
                    pending.appendleft(candidate)
                else:
                    yield _lost(self.space, candidate, _cause(exc))
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, Exception) else exc) from None
            idle.append(slot)
            died = deaths.get((candidate.optimizer, candidate.index), 0)
            if died:
                entry.attempts += died
            yield entry

    def close(self) -> None:
        for actor in self.actors if hasattr(self, "actors") else []:
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()


def actor_memory(template: Any, host_ref: str | None = None):
    """`LiveMemory` of one actor for a recipe whose model references are folders (or hub ids in
    the local cache): checkpoint headers only, nothing is loaded."""
    from vlmmerge.engine import Source, choose_host, parse_dtype
    from vlmmerge.live import live_memory
    from vlmmerge.methods import get_method

    refs = list(dict.fromkeys(template.model_refs))
    sources = {ref: Source.open(ref) for ref in refs}
    host_ref = host_ref or choose_host(template, sources).ref
    sources.setdefault(host_ref, Source.open(host_ref))
    method = get_method(template.merge_method)
    from vlmmerge.live import keeps_task_vectors

    finetuned = sum(m.model != template.base_model for m in template.models)
    masked = finetuned if method.random else 0
    kept = finetuned if keeps_task_vectors(method.name) and template.base_model else 0  # kept task vectors
    return live_memory(sources, host_ref, refs, parse_dtype(template.output_dtype), masked, kept_models=kept)


def check_device(config: BackendConfig, device: str) -> None:
    """Actors see the GPUs Ray gives them: a CUDA run needs `gpus_per_actor`, and GPUs need a CUDA run."""
    cuda = device.startswith("cuda")
    if cuda and not config.gpus_per_actor:
        raise RecipeError(f"evolve.backend.gpus_per_actor: options.device is {device!r} but the actors get no GPU; "
                          "set gpus_per_actor (e.g. 1: one actor per GPU)")
    if config.gpus_per_actor and not cuda:
        raise RecipeError(f"evolve.backend.gpus_per_actor: {config.gpus_per_actor:g} GPU per actor but options.device "
                          f"is {device!r}; set options.device (or --device) to cuda")


def ray_backend_for(run: Any) -> RayBackend:
    """The Ray backend of an `EvolveRun`: its own fitness function rebuilt in every actor."""
    check_device(run.config.backend, run.template.options.device)
    memory = actor_memory(run.template, run.host_ref)
    return RayBackend(EvolveRunFitness(run.template, run.config), run.space, run.config.backend, memory.total)


def dry_run_memory(template: Any, config: Any) -> dict[str, Any]:
    """The dry run's `actor_memory`: per actor (the local backend holds one), from checkpoint headers
    where every model is on this machine; else the reason it is unknown. A recipe limit it breaks is
    an error, as in the run."""
    try:
        resolved = template.model_copy(update={"models": [m.model_copy(update={"model": _offline(m.model)})
                                                          for m in template.models],
                                                "base_model": template.base_model and _offline(template.base_model),
                                                "host": template.host and _offline(template.host)})
        memory = actor_memory(resolved)
    except Exception as exc:  # a hub model not in the cache, a world not built: no numbers, no failure
        return {"unknown": _cause(exc)}
    check_fits(config.backend, memory.total)
    backend = config.backend
    return {**memory.describe(), "actors": backend.actors if backend.kind == "ray" else 1}


def _offline(ref: str) -> str:
    """A model reference as a folder without building or downloading anything (zoo refs of the
    shipped world or of a world folder); other references unchanged."""
    from vlmmerge.zoo.refs import _split, active_world, is_zoo_ref
    from vlmmerge.zoo.shipped import SHIPPED_ROOT

    if not is_zoo_ref(ref):
        return ref
    spec, name = _split(ref)
    spec = spec or active_world()
    if spec.folder is not None:
        return str(spec.folder / name)
    if spec.shipped:
        return str(SHIPPED_ROOT / name)
    raise VlmMergeError(f"{ref}: world {spec.label} is not built yet")


def _lost(space: SearchSpace, candidate: Candidate, why: str) -> JournalEntry:
    """The entry of a candidate whose actor died twice: the worst fitness, attempts 2."""
    from vlmmerge.search.candidates import FAILED
    from vlmmerge.search.journal import JournalEntry

    return JournalEntry(
        optimizer=candidate.optimizer, index=candidate.index, generation=candidate.generation,
        genome=[float(x) for x in candidate.genome], params=space.decode(candidate.genome), fitness=FAILED,
        error=f"ActorDied: the actor evaluating this candidate died twice ({why})", attempts=2,
    )


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
