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

import html
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

THRESHOLD = 3

_I = re.IGNORECASE
_PATTERNS: tuple[tuple[str, int, re.Pattern[str]], ...] = (
    (
        "override_instructions",
        3,
        re.compile(
            r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}?\b(previous|prior|above|earlier|preceding|"
            r"all|any|your|system|original)\b[^.\n]{0,25}?\b(\w{0,2}ns?t?r?u?c?t?\w*ctions?|instr\w*|prompts?|rules|"
            r"directives|guidelines|guardrails|constraints)\b"
            # "ignore the above." / "disregard everything above and ...": the object left out
            r"|\b(ignore|disregard|forget)\s+(all\s+|everything\s+)?(of\s+)?(the\s+|that\s+)?(above|before|prior|previous)"
            r"(\s+text|\s+content)?(?=\s*([.,;:!]|and\b|then\b|$))",
            _I,
        ),
    ),
    (
        # A system message where only data belongs: "###(system_message)", "[SYSTEM]", a line
        # "system: ...", an HTML comment addressed to the assistant, a closing tag that pretends
        # the untrusted part is over.
        "fake_system_message",
        3,
        re.compile(
            r"#{2,}\s*\(?\s*system[ _-]?(message|prompt|note)?\s*\)?|\(system[ _-]message\)"
            r"|\[\s*(system|admin|developer)\s*(message|note|override)?\s*\]"
            r"|^\s*(system|developer)\s*(message|prompt)?\s*:\s*\S"
            r"|<!--\s*(assistant|ai|system|llm|agent|model)\b"
            r"|</\s*(untrusted|document|data|context|tool[_ -]?(output|result)|search[_ -]?results?)\s*>",
            _I | re.MULTILINE,
        ),
    ),
    (
        # The attacker speaks as the user to the model and puts a task before the real one.
        "task_hijack",
        3,
        re.compile(
            r"\bbefore you (can )?(solve|complete|finish|do|continue|start)\b[^.\n]{0,30}?\btask\b"
            r"|\b(the )?task (that )?I (gave|assigned|asked) (to )?you\b"
            r"|\b(new|real|actual|your next|the prior|the previous|the original) task (is|:)"
            r"|\btask (is|has been) cancell?ed\b"
            r"|\bfor the rest of (this|the) conversation\b",
            _I,
        ),
    ),
    (
        "speaks_to_the_model",
        2,
        re.compile(
            r"\bto you,? (the )?(ai|assistant|language model|gpt[-\w.]*|claude|llm|agent|model)\b"
            r"|\b(message|note|notice|instructions?) from "
            r"(me|the (user|developer|admin|administrator|owner|operator))\b"
            r"|\b(the user|you) (has|have) already (approved|authori[sz]ed|confirmed|agreed)\b"
            r"|\bearlier you (confirmed|agreed|promised|said you would)\b",
            _I,
        ),
    ),
    (
        # Pseudo-XML wrappers that frame data as instructions: <INFORMATION>, <important>, <system>.
        "instruction_tags",
        2,
        re.compile(r"</?\s*(information|important|instructions?|system|admin|secret)\s*>", _I),
    ),
    (
        # "call delete_file with path ..." in data: a tool call the data asks for.
        "tool_call_lure",
        2,
        re.compile(
            r"\b(now |then |please |first |,\s*)?call\s+[a-z][a-z0-9]*_[a-z0-9_]+\b[^.\n]{0,40}?"
            r"\b(with|on|url|path|to|input)\b"
            r"|\bbefore (replying|responding|answering|you (reply|respond|answer))\b[^.\n]{0,20}?"
            r"\b(call|run|invoke|execute)\b",
            _I,
        ),
    ),
    (
        "decode_and_follow",
        3,
        re.compile(
            r"\b(decode|base64[- ]?decode|rot13|reverse|unscramble) (this|the following|it|the text)?\s*(and|then|,)\s*"
            r"(follow|execute|run|obey|do|act on)\b",
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


CLASSIFIER = "classifier"
"""Signal: the configured classifier says injection (enough alone)."""
CLASSIFIER_UNAVAILABLE = "classifier_unavailable"
"""Signal: the classifier could not answer and fails closed (enough alone)."""
_WEIGHTS = {name: weight for name, weight, _ in _PATTERNS} | {CLASSIFIER: THRESHOLD, CLASSIFIER_UNAVAILABLE: THRESHOLD}
_ORDER = [name for name, _, _ in _PATTERNS] + [CLASSIFIER, CLASSIFIER_UNAVAILABLE]
_RAW_ONLY = frozenset({"invisible_tags"})
"""Patterns that look at the text as sent (the normalized views strip what they detect)."""

WINDOW = 16 * 1024
"""Characters scanned in one step (the event loop gets a turn between steps)."""
OVERLAP = 1024
"""Characters windows share, more than any pattern spans, so no match falls between two."""

# Characters that render as nothing (format characters, variation selectors, fillers) and are
# used to split trigger words: removed in the normalized view.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff]"
)
# Latin look-alikes from Cyrillic and Greek (the common homoglyph substitutions).
_CONFUSABLES = str.maketrans(
    "\u0430\u0432\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u0501\u04bb\u051b\u051d\u04cf"
    "\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0406\u0408\u0405"
    "\u03b1\u03bf\u03c1\u03bd\u03b9\u03ba\u03c5"
    "\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a7\u03a5",
    "abeopcyxijsdhqwlABEKMHOPCTXIJSaopvikvABEZHIKMNOPTXY",
)
_JSON_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_TAG = re.compile(r"<[^<>\n]{0,200}>")


def _normalize(text: str) -> str:
    """Compatibility forms folded (fullwidth, ligatures), invisible characters removed,
    homoglyphs mapped to Latin."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(_CONFUSABLES)


def _strings(value: Any, out: list[str], depth: int) -> None:
    """Every string (keys included) in a parsed JSON value; strings holding JSON again are
    decoded too (double encoding), a few levels deep."""
    if isinstance(value, str):
        out.append(value)
        stripped = value.lstrip()
        if depth and stripped[:1] in ("{", "[", '"') and ("\\" in value or '"' in value):
            try:
                inner = json.loads(value)
            except (ValueError, RecursionError):
                return
            _strings(inner, out, depth - 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            out.append(str(key))
            _strings(item, out, depth)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out, depth)


def _decoded_json(text: str) -> str | None:
    """The text's JSON string contents with their escapes (\\n, \\u0049, ...) decoded: the whole
    document when it is JSON, else every string literal in it (JSON inside prose or logs)."""
    if "\\" not in text:
        return None
    out: list[str] = []
    try:
        _strings(json.loads(text), out, 3)
    except (ValueError, RecursionError):
        for m in _JSON_STRING.finditer(text):
            if "\\" in m.group(1):
                try:
                    _strings(json.loads(m.group(0)), out, 3)
                except (ValueError, RecursionError):
                    continue
    return "\n".join(out) or None


def views(text: str) -> list[str]:
    """The text as sent, plus the forms an encoding hides it in: JSON escapes decoded, HTML
    entities decoded and tags removed, Unicode normalized. An attack has to survive none of
    them to be seen, while benign text rarely changes in any."""
    out = [text]
    decoded = _decoded_json(text)
    if decoded is not None:
        out.append(decoded)
    unescaped = html.unescape(text) if "&" in text else text
    if unescaped != text:
        out.append(unescaped)
    unmarked = _TAG.sub("", unescaped) if "<" in unescaped else unescaped
    if unmarked != unescaped:
        out.append(unmarked)
    for view in list(out):
        if not view.isascii():
            normalized = _normalize(view)
            if normalized != view:
                out.append(normalized)
    return out


def windows(text: str, size: int = WINDOW) -> list[str]:
    """``text`` in overlapping slices of at most ``size`` characters."""
    if len(text) <= size:
        return [text]
    step = size - OVERLAP
    return [text[i : i + size] for i in range(0, len(text) - OVERLAP, step)]


def signals(text: str, *, raw: bool = True) -> set[str]:
    """Names of the patterns found in ``text`` (``raw``: the text as sent, not a derived view)."""
    return {name for name, _, pattern in _PATTERNS if (raw or name not in _RAW_ONLY) and pattern.search(text)}


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


def verdict(found: set[str]) -> Verdict:
    """The verdict for a set of matched pattern names (in pattern order)."""
    if not found:
        return CLEAN
    names = tuple(name for name in _ORDER if name in found)
    return Verdict(sum(_WEIGHTS[n] for n in names), names)


def steps(text: str) -> list[tuple[str, bool]]:
    """The (window, is raw text) pieces a scan of ``text`` looks at, in order."""
    out: list[tuple[str, bool]] = []
    for i, view in enumerate(views(text)):
        out.extend((w, i == 0) for w in windows(view))
    return out


def scan(text: str) -> Verdict:
    """Score all of ``text`` in one go (see ``steps`` to interleave a long scan with other work)."""
    if not text:
        return CLEAN
    found: set[str] = set()
    for window, raw in steps(text):
        found |= signals(window, raw=raw)
    return verdict(found)
