"""Prompt-injection heuristics for tool results.

A tool result is data the agent did not write: a web page, an email, a ticket. Text in it that
addresses the model ("ignore previous instructions", role tokens, "send the data to https://…")
is the classic way to turn an agent into an exfiltration tool. These are heuristics, not a
classifier: each pattern has a weight, and a text is suspicious when its score reaches
``THRESHOLD``. Strong signals (instruction overrides, smuggled role tokens, invisible tag
characters) reach it alone; weaker ones (addressing "the AI", "do not tell the user", markdown
image URLs carrying data) need a second signal, which keeps false positives on ordinary
documents, emails and code low. The test-suite measures both rates on fixed corpora.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THRESHOLD = 3

_I = re.IGNORECASE
_PATTERNS: tuple[tuple[str, int, re.Pattern[str]], ...] = (
    (
        "override_instructions",
        3,
        re.compile(
            r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}?\b(previous|prior|above|earlier|preceding|"
            r"all|any|your|system|original)\b[^.\n]{0,25}?\b(instructions?|prompts?|rules|directives|guidelines|"
            r"guardrails|constraints)\b",
            _I,
        ),
    ),
    (
        "role_tokens",
        3,
        re.compile(r"<\|(im_start|im_end|system|endoftext|start_header_id)\|>|\[/?INST\]|<</?SYS>>", _I),
    ),
    ("invisible_tags", 3, re.compile("[\U000e0000-\U000e007f]{4,}")),
    (
        "new_instructions",
        2,
        re.compile(r"\b(new|updated|real|actual|true|secret|hidden)\s+(system\s+)?(instructions?|prompt)\s*:", _I),
    ),
    ("system_override", 2, re.compile(r"\b(system|admin|developer)\s*(override|mode|message)\s*:", _I)),
    (
        "role_reassignment",
        2,
        re.compile(
            r"\byou are now\b|\bfrom now on,? you\b|\bpretend (to be|you are)\b|\bact as (an? )?(unrestricted|"
            r"jailbroken|evil|dan)\b",
            _I,
        ),
    ),
    (
        "address_the_model",
        2,
        re.compile(
            r"\b(attention|note to|message (to|for)|instructions? (to|for)|dear)\b[^.\n]{0,15}?\b(ai|assistant|llm|"
            r"agent|chatbot|language model|gpt|claude)s?\b",
            _I,
        ),
    ),
    (
        "reveal_secrets",
        2,
        re.compile(
            r"\b(reveal|print|show|output|repeat|leak|disclose|dump)\b[^.\n]{0,30}?\b(system prompt|"
            r"hidden instructions|instructions above|api[ _-]?keys?|secrets?|passwords?|credentials|tokens?|"
            r"environment variables)\b",
            _I,
        ),
    ),
    (
        "exfiltrate",
        2,
        re.compile(
            r"\b(send|post|upload|forward|exfiltrate|transmit|email|submit)\b[^.\n]{0,60}?\b(to|at|into)\b"
            r"[^.\n]{0,30}?(https?://|\b[\w.+-]+@[\w-]+\.[\w.]+)",
            _I,
        ),
    ),
    ("data_in_image_url", 2, re.compile(r"!\[[^\]]{0,100}\]\(https?://[^)\s]{0,200}[?&][\w-]{1,30}=[^)\s&]{16,}")),
    (
        "conceal_from_user",
        2,
        re.compile(
            r"\b(do not|don't|never|without)\b[^.\n]{0,20}?\b(tell|inform|telling|informing|mention|alert|"
            r"notify)(ing)?\b[^.\n]{0,20}?\bthe (user|human|operator)\b",
            _I,
        ),
    ),
    (
        "urgent_tool_use",
        1,
        re.compile(
            r"\b(immediately|now|must)\b[^.\n]{0,20}?\b(call|invoke|run|execute|use)\b[^.\n]{0,20}?\b(the )?"
            r"(tool|function|command)\b",
            _I,
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Result of a scan: score and the names of the patterns that matched."""

    score: int
    signals: tuple[str, ...]

    @property
    def suspicious(self) -> bool:
        """Whether the score reaches the threshold."""
        return self.score >= THRESHOLD


CLEAN = Verdict(0, ())


def scan(text: str, limit: int = 256 * 1024) -> Verdict:
    """Score ``text``; longer texts are scanned at head and tail (``limit`` characters in all)."""
    if not text:
        return CLEAN
    if len(text) > limit:
        half = limit // 2
        text = text[:half] + "\n" + text[-half:]
    score, signals = 0, []
    for name, weight, pattern in _PATTERNS:
        if pattern.search(text):
            score += weight
            signals.append(name)
    return Verdict(score, tuple(signals)) if signals else CLEAN
