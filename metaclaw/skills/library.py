"""The proxy's view of the skill library: `SkillLibrary.open(settings)` once, then
`library.select(messages)` on every turn.

Contract with the proxy (docs/skills.md): `select` never raises and does no I/O. It embeds the
cleaned query, searches the in-memory snapshot and formats the block; on any error it returns an
empty `Injection` (still stamped with the skill-set version in force) and counts the failure in
`library.health`. Every `skills.refresh_interval_s` it starts a background check of the
library's signature (`state.json`'s stat, or the table versions on an object store); when the
library changed (another process committed a new skill-set version or new statistics) that
thread rebuilds the snapshot and swaps it in whole; until then the old one serves.

Prompt caching: upstream caches the longest byte-identical prefix of a request, and the block
sits in the system prompt, so a block that changed from turn to turn would void the cache of a
long agent context on every turn. So the first non-empty selection of a session is pinned: its
later turns get the same block (the same skill versions, whose text is immutable) until one of
them leaves the library (retired, or a proposal out of scope) — then the session selects anew.
A pin is per agent (per set of libraries read): two agents sending one session id never get
each other's block, and a change to an agent's shares starts its sessions afresh.

Agents (docs/agents.md): a turn reads its agent's library plus those the agent shares. The
snapshot holds every library; `SkillIndex.allowed` filters it in memory, so an agent costs the
hot path nothing beyond a dict lookup and the filter itself.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metaclaw.ledger.schemas import DEFAULT_AGENT
from metaclaw.skills.index import BLOCK_FOOTER, BLOCK_HEADER, SkillIndex, build_entries, terms
from metaclaw.skills.query import extract_query

log = logging.getLogger(__name__)
PINNED_SESSIONS = 10_000  # sessions whose selection is remembered (least recently used dropped)


@dataclass(frozen=True)
class Injection:
    """What to add to one request: the block for the system prompt and what it contains."""

    skills: list[str] = field(default_factory=list)  # skill_id@version, in block order
    block: str = ""  # empty: inject nothing
    skill_set_version: int = 0
    tokens: int = 0
    query: str = ""
    latency_ms: float = 0.0


@dataclass
class LibraryHealth:
    selections: int = 0
    injections: int = 0
    failures: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    last_error: str | None = None
    active_skills: int = 0
    skill_set_version: int = 0
    ready: bool = False


class SkillLibrary:
    """Retrieval and formatting for the proxy's hot path; see the module docstring."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.config = settings.skills
        self.health = LibraryHealth()
        self._index: SkillIndex | None = None
        self._store: Any = None
        self._embedder: Any = None
        self._state_sig: tuple[Any, ...] | None = None
        self._next_check = 0.0
        self._refreshing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._token_counts: dict[str, int] = {}
        self._pins: OrderedDict[tuple[tuple[str, ...], str], tuple[list[str], str, int]] = (
            OrderedDict()
        )
        self._pin_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Any, *, block: bool = True) -> SkillLibrary:
        """Load LanceDB, the embedder and a first snapshot (`block=False`: in the background).

        Never raises: a library that cannot load serves empty injections and says why in
        `health()`; it retries on the refresh interval.
        """
        lib = cls(settings)
        if not lib.config.enabled:
            return lib
        if block:
            lib._refresh()
        else:
            lib._refresh_async()
        return lib

    # -- the hot path ------------------------------------------------------------------------
    def select(
        self,
        messages: Any,
        session_id: str | None = None,
        libraries: tuple[str, ...] = (DEFAULT_AGENT,),
    ) -> Injection:
        """The skills for a request's messages (OpenAI or Anthropic `messages`); never raises.

        `session_id` scopes proposed skills (only their origin sessions, or the trial share)
        and pins the session's selection so its prompt prefix stays cacheable. `libraries`: the
        agents whose skills this turn may get (`Registry.skill_libraries`).
        """
        start = time.perf_counter()
        index = self._index
        version = index.skill_set_version if index is not None else self.health.skill_set_version
        try:
            self.health.selections += 1
            self._maybe_refresh()
            if index is None or not self.config.enabled or self.config.top_k == 0:
                return Injection(skill_set_version=version)
            cfg = self.config
            pin_key = (libraries, session_id) if session_id else None
            pinned = self._pinned(index, pin_key) if pin_key else None
            if pinned is not None:
                refs, block, tokens = pinned
                self.health.injections += 1
                return Injection(
                    skills=list(refs),
                    block=block,
                    skill_set_version=version,
                    tokens=tokens,
                    latency_ms=(time.perf_counter() - start) * 1000,
                )
            query = extract_query(messages)
            if not query or len(index) == 0:
                return Injection(skill_set_version=version, query=query)
            qvec = self._embedder.embed_one(query)
            allowed = index.allowed(libraries)
            candidates = index.candidates(
                qvec,
                terms(query),
                text_weight=cfg.text_weight,
                prior=(cfg.prior_alpha, cfg.prior_beta),
                allowed=allowed,
            )
            chosen = index.select(
                candidates,
                top_k=cfg.top_k,
                min_similarity=cfg.min_similarity,
                token_budget=cfg.token_budget,
                session_id=session_id,
                trial_share=cfg.trial_share,
                allowed=allowed,
            )
            if chosen.refs:
                self.health.injections += 1
                if pin_key:
                    self._pin(pin_key, (chosen.refs, chosen.block, chosen.tokens))
            return Injection(
                skills=chosen.refs,
                block=chosen.block,
                skill_set_version=version,
                tokens=chosen.tokens,
                query=query,
                latency_ms=(time.perf_counter() - start) * 1000,
            )
        except Exception as exc:  # retrieval must never fail a chat request
            self._fail("select", exc)
            return Injection(skill_set_version=version)

    def _pinned(
        self, index: SkillIndex, key: tuple[tuple[str, ...], str]
    ) -> tuple[list[str], str, int] | None:
        """The session's pinned selection while every skill in it is still injectable here."""
        session_id = key[1]
        with self._pin_lock:
            pin = self._pins.get(key)
            if pin is None:
                return None
            self._pins.move_to_end(key)
        positions = [index.by_ref.get(ref) for ref in pin[0]]
        hidden = index.hidden(session_id, self.config.trial_share) if index.proposed else set()
        if any(p is None or p in hidden for p in positions):
            with self._pin_lock:
                self._pins.pop(key, None)
            return None
        return pin

    def _pin(self, key: tuple[tuple[str, ...], str], pin: tuple[list[str], str, int]) -> None:
        with self._pin_lock:
            self._pins[key] = pin
            self._pins.move_to_end(key)
            while len(self._pins) > PINNED_SESSIONS:
                self._pins.popitem(last=False)

    def explain(self, messages: Any, limit: int = 10) -> list[dict[str, Any]]:
        """The ranked candidates for a request (for `metaclaw skills search` and tests)."""
        index = self._index
        query = extract_query(messages)
        if index is None or not query:
            return []
        qvec = self._embedder.embed_one(query)
        cfg = self.config
        out = []
        ranked = index.candidates(
            qvec, terms(query), text_weight=cfg.text_weight, prior=(cfg.prior_alpha, cfg.prior_beta)
        )
        for c in itertools.islice(ranked, limit):
            e = index.entries[c.position]
            out.append(
                {
                    "ref": e.ref,
                    "name": e.name,
                    "similarity": round(c.similarity, 4),
                    "cosine": round(c.cosine, 4),
                    "lexical": round(c.lexical, 4),
                    "rate": round(c.rate, 4),
                    "score": round(c.score, 4),
                    "eligible": c.similarity >= cfg.min_similarity,
                }
            )
        return out

    # -- snapshot management -----------------------------------------------------------------
    def _maybe_refresh(self) -> None:
        """At most every `refresh_interval_s`, a background check (and rebuild on change)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.config.refresh_interval_s
        self._refresh_async()

    def _refresh_async(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(
            target=self._refresh, name="metaclaw-skills-refresh", daemon=True
        )
        self._thread.start()

    def wait_refreshed(self, timeout: float = 60.0) -> None:
        """Block until a background refresh (if any) is done (tests, benchmarks)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def refresh(self) -> None:
        """Rebuild the snapshot now, in this thread."""
        self._refresh()

    def _refresh(self) -> None:
        if not self._refreshing.acquire(blocking=False):
            return
        try:
            sig = self._store.signature() if self._store is not None else None
            if sig is not None and sig == self._state_sig and self._index is not None:
                return  # nothing changed
            self._index = self._build()
            self._state_sig = self._store.signature() if sig is None else sig
            self.health.refreshes += 1
            self.health.ready = True
            self.health.active_skills = len(self._index)
            self.health.skill_set_version = self._index.skill_set_version
        except Exception as exc:
            self.health.refresh_failures += 1
            self._fail("refresh", exc)
        finally:
            self._refreshing.release()

    def _build(self) -> SkillIndex:
        from metaclaw.skills.store import SkillStore

        if self._store is None:
            self._store = SkillStore.open(self.settings)
            self._embedder = self._store.embedder
        store = self._store
        state = store.read_state()
        table = store.active_arrow()
        vectors = (
            np.asarray(table.column("vector").combine_chunks().flatten(), dtype=np.float32).reshape(
                table.num_rows, -1
            )
            if table.num_rows
            else np.zeros((0, 384), np.float32)
        )
        rows = table.drop_columns(["vector"]).to_pylist()
        stats = {
            r["ref"]: (float(r["successes"]), float(r["failures"])) for r in store.stats_rows()
        }
        cache = self._token_counts  # versions are immutable: count each one once

        def count(sections: list[str]) -> list[int]:
            missing = [i for i, r in enumerate(rows) if r["row_id"] not in cache]
            counted = self._embedder.count_tokens([sections[i] for i in missing])
            for i, n in zip(missing, counted, strict=True):
                cache[rows[i]["row_id"]] = n
            return [cache[r["row_id"]] for r in rows]

        entries = build_entries(rows, stats, count)
        header = self._embedder.count_tokens([BLOCK_HEADER + "\n\n\n\n" + BLOCK_FOOTER])[0]
        texts = [
            f"{r['name'].replace('_', ' ').replace('-', ' ')}. {r['description']} "
            f"{r['when_to_use']} {r['category']}"
            for r in rows
        ]
        return SkillIndex(
            entries,
            vectors,
            texts,
            skill_set_version=state["skill_set_version"],
            header_tokens=header,
            ivf_min=self.config.ivf_min_skills,
        )

    def _fail(self, where: str, exc: BaseException) -> None:
        self.health.failures += 1
        self.health.last_error = f"{where}: {type(exc).__name__}: {exc}"
        if self.health.failures <= 5 or self.health.failures % 1000 == 0:
            log.error(
                "skill retrieval %s failed (%d failures so far): %s",
                where,
                self.health.failures,
                exc,
                exc_info=self.health.failures <= 1,
            )

    def close(self) -> None:
        self.wait_refreshed(5.0)
        self._index = None
