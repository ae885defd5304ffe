"""The optional HTTP prompt-injection classifier (``guardconfig.injectionClassifier``).

The built-in heuristics catch common, lazy attacks cheaply; a model-based classifier (run by
the platform team, e.g. a fine-tuned DeBERTa behind an HTTP endpoint) catches more and costs a
round trip. The guard asks it about every text it scans and combines the answers: a text is
suspicious when either says so. When the classifier cannot answer within its timeout, the
configuration decides: fail open (the heuristics alone decide) or fail closed (the text counts
as suspicious), so an outage is never silently a bypass unless someone chose it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from agentfleet.api.guardconfig import InjectionClassifier
from agentfleet.api.units import duration_seconds

MAX_ANSWER = 64 * 1024


@dataclass(frozen=True, slots=True)
class ClassifierAnswer:
    """The classifier's answer: ``injection`` None when it gave none (``error`` says why)."""

    injection: bool | None
    score: float | None = None
    error: str | None = None


class Classifier:
    """Client of one classifier endpoint, on the guard's pooled session."""

    def __init__(self, spec: InjectionClassifier, session: Callable[[], aiohttp.ClientSession]) -> None:
        self.url = spec.url
        self.timeout = duration_seconds(spec.timeout)
        self.fail_open = spec.fail_open
        self._session = session

    async def classify(self, text: str, source: str, tool: str | None) -> ClassifierAnswer:
        """Ask about one text (never raises: failures come back as an answer with ``error``)."""
        body = json.dumps({"text": text, "source": source, "tool": tool}).encode()
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session().post(
                    self.url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    raw = await resp.content.read(MAX_ANSWER + 1)
                    if resp.status != 200:
                        return ClassifierAnswer(None, error=f"HTTP {resp.status}")
        except TimeoutError:
            return ClassifierAnswer(None, error=f"no answer within {self.timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return ClassifierAnswer(None, error=f"{type(exc).__name__}: {exc}"[:300])
        if len(raw) > MAX_ANSWER:
            return ClassifierAnswer(None, error=f"answer larger than {MAX_ANSWER} bytes")
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            return ClassifierAnswer(None, error="answer is not JSON")
        verdict = answer.get("injection") if isinstance(answer, dict) else None
        if not isinstance(verdict, bool):
            return ClassifierAnswer(None, error='answer has no boolean "injection"')
        score = answer.get("score")
        return ClassifierAnswer(verdict, float(score) if isinstance(score, int | float) else None)
