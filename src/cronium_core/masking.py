"""Masking secrets in what a job prints and returns (RELIABILITY §9.6 K4).

:class:`SecretMasker` replaces every occurrence of a secret with ``***``, and also the forms a
script is likely to print it in:

- raw, and each line of a multi-line secret (a PEM key printed line by line);
- JSON-escaped (``ensure_ascii`` on and off, and with ``<``, ``>``, ``&`` as ``\u003c``... as
  Go and HTML-safe encoders write them) and Python ``repr``-escaped;
- URL-encoded (``quote``, ``quote_plus``, JavaScript's ``encodeURIComponent`` and
  ``encodeURI``, upper- and lower-case hex);
- HTML/XML-escaped (with and without quotes, ``&#x27;`` or ``&#39;``);
- base64 (standard and URL-safe alphabets) at each of the three byte alignments, keeping only
  the characters that depend on the secret alone, so that the secret is found inside a longer
  base64 stream (``base64("ab" + secret + ...)``) too.

In an output (:meth:`SecretMasker.mask_value`) a number whose digits hold a secret is masked
too (it becomes the mask, a string).

Overlapping and adjacent secrets are masked as a whole: every match of every form is found,
the ranges are merged, and each merged range becomes one ``***``.

Secrets shorter than :data:`MIN_SECRET_LENGTH` characters (not counting surrounding
whitespace) are not masked at all: masking ``"a"`` everywhere would destroy the log and tell
the reader the secret anyway. The variables store refuses to store such secrets; a masker
given one ignores it and logs a warning. Likewise a line of a multi-line secret that is
shorter than that is not masked on its own (it is masked as part of the whole secret).

Secrets cut across lines: :meth:`SecretMasker.lines` gives a :class:`LineMasker` for one job.
It masks a batch of lines as the worker stores them, looking at the lines of each stream joined
together (and at all lines joined in arrival order, which catches a secret half printed to
stdout and half to stderr). Its limits:

- both pieces are masked only when they are in the same batch (the worker stores a batch
  every few tens of milliseconds); across batches only the piece in the later batch is masked,
  because the earlier line is already stored;
- pieces are joined without a separator: ``print(s[:5]); print(s[5:])`` is caught; pieces
  separated by other text, or a secret transformed between the pieces, are not;
- a line cut by the executor's line-length limit loses its tail before masking sees it, so a
  secret straddling that cut leaves its head unmasked.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from collections.abc import Hashable, Iterable, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "MIN_SECRET_LENGTH", "LineMasker", "SecretMasker", "secret_forms"]

log = logging.getLogger("cronium.masking")

MASK = "***"
#: shorter secrets are refused by the store and ignored by the masker
MIN_SECRET_LENGTH = 4


def secret_forms(secret: str) -> set[str]:
    """Every text form of ``secret`` that the masker looks for (at least
    :data:`MIN_SECRET_LENGTH` characters each); empty for a secret too short to mask."""
    if len(secret.strip()) < MIN_SECRET_LENGTH:
        return set()
    bases = {secret}
    lines = [line.strip() for line in secret.splitlines()]
    bases.update(line for line in lines if len(line) >= MIN_SECRET_LENGTH)
    forms: set[str] = set()
    for text in bases:
        forms.add(text)
        for escaped in (json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]):
            forms.add(escaped)
            forms.add(_html_safe_json(escaped))
        forms.add(repr(text)[1:-1])
        for encoded in (
            quote(text, safe=""),
            quote(text),
            quote_plus(text, safe=""),
            quote(text, safe=_URI_COMPONENT_SAFE),
            quote(text, safe=_URI_SAFE),
        ):
            forms.add(encoded)
            forms.add(_lower_hex(encoded))
        for escaped in (html.escape(text), html.escape(text, quote=False)):
            forms.add(escaped)
            forms.add(escaped.replace("&#x27;", "&#39;"))
        forms.update(_base64_forms(text.encode("utf-8")))
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


#: what JavaScript's encodeURIComponent and encodeURI leave as they are (besides A-Z a-z 0-9)
_URI_COMPONENT_SAFE = "-_.!~*'()"
_URI_SAFE = _URI_COMPONENT_SAFE + ";,/?:@&=+$#"


def _html_safe_json(escaped: str) -> str:
    return escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _lower_hex(encoded: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded)


def _base64_forms(data: bytes) -> set[str]:
    """The base64 characters that ``data`` alone determines, when it starts at each of the
    three positions of a 3-byte group of a longer stream."""
    forms: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data + bytes(3)).decode("ascii")
        # character i covers bits [6i, 6i + 6): keep those entirely inside the data's bits
        first = -(-8 * offset // 6)
        last = 8 * (offset + len(data)) // 6
        inner = encoded[first:last]
        forms.add(inner)
        forms.add(inner.replace("+", "-").replace("/", "_"))
    return forms


class _Trie:
    """Literal strings compiled into one regular expression that tries them by common prefix
    (fast with hundreds of forms) and prefers the longest at each position."""

    @staticmethod
    def pattern(words: Iterable[str]) -> str:
        root: dict[str, Any] = {}
        for word in words:
            node = root
            for char in word:
                node = node.setdefault(char, {})
            node[""] = True
        return _Trie._node(root)

    @staticmethod
    def _node(node: dict[str, Any]) -> str:
        ends = "" in node
        branches: list[str] = []
        for char, child in sorted(node.items()):
            if not char:
                continue
            # follow a chain of single children as one literal: recursion happens only where
            # words branch or end, so a 4 kB secret does not nest 4,000 groups deep
            run = [char]
            while len(child) == 1 and "" not in child:
                (char, child), *_ = child.items()
                run.append(char)
            branches.append(re.escape("".join(run)) + _Trie._node(child))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # greedy optional: the longer word is tried first, the shorter one on backtracking
        return f"(?:{body})?" if ends else body


class SecretMasker:
    """Masks the given secrets in text: ``masker.mask(line) -> str``."""

    def __init__(
        self, secrets: Iterable[str], *, mask: str = MASK, exact: Iterable[str] = ()
    ) -> None:
        """``exact``: texts masked only as they are, in none of the other forms (a job's own
        runtime token: what a script prints of it is the token itself, from its environment)."""
        self.mask_text = mask
        forms = {text for text in exact if len(text) >= MIN_SECRET_LENGTH}
        self.ignored = 0
        for secret in secrets:
            found = secret_forms(secret)
            if not found:
                self.ignored += 1
            forms |= found
        if self.ignored:
            log.warning(
                "%d secret(s) shorter than %d characters are not masked", self.ignored,
                MIN_SECRET_LENGTH,
            )  # fmt: skip
        self.forms = frozenset(forms)
        #: the longest form: a match crossing a line boundary spans at most this many chars
        self.longest = max(map(len, forms), default=0)
        self._finder = (
            re.compile("(?=(" + _Trie.pattern(forms) + "))", re.DOTALL) if forms else None
        )

    def __bool__(self) -> bool:
        return self._finder is not None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The merged ``[start, end)`` ranges of ``text`` that hold a secret form."""
        if self._finder is None:
            return []
        merged: list[tuple[int, int]] = []
        for match in self._finder.finditer(text):
            start, end = match.start(), match.start() + len(match.group(1))
            if merged and start <= merged[-1][1]:  # overlapping or adjacent
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def mask(self, text: str) -> str:
        """``text`` with every secret form replaced by the mask."""
        if self._finder is None:
            return text
        return _apply(text, self.spans(text), self.mask_text)

    def mask_value(self, value: Any) -> Any:
        """A JSON value (an output, an error body) with every string in it masked, keys too."""
        if self._finder is None:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            # a secret of digits, output as a number: the number goes (as the mask)
            text = json.dumps(value)
            masked = self.mask(text)
            return masked if masked != text else value
        if isinstance(value, list | tuple):
            return [self.mask_value(item) for item in value]
        if isinstance(value, dict):
            return {self.mask(str(k)): self.mask_value(v) for k, v in value.items()}
        return value

    def lines(self) -> LineMasker:
        """A masker for the successive batches of lines of one job."""
        return LineMasker(self)


def _apply(text: str, spans: Sequence[tuple[int, int]], mask: str) -> str:
    if not spans:
        return text
    parts: list[str] = []
    at = 0
    for start, end in spans:
        parts.append(text[at:start])
        parts.append(mask)
        at = end
    parts.append(text[at:])
    return "".join(parts)


class LineMasker:
    """Masks batches of lines of one job, catching secrets cut across consecutive lines.

    Call :meth:`mask_batch` with each batch of ``(stream, text)`` in arrival order; it returns
    the masked texts in the same order. It keeps, per stream and for all streams together, the
    raw tail of what it saw last, so that a secret whose first piece ended the previous batch
    has its second piece masked in this one."""

    #: key of the view that joins every stream in arrival order
    _ALL = object()

    def __init__(self, masker: SecretMasker) -> None:
        self.masker = masker
        self._tails: dict[object, str] = {}

    def mask_batch(self, lines: Sequence[tuple[Hashable, str]]) -> list[str]:
        masker = self.masker
        if not masker or not lines:
            return [text for _, text in lines]
        spans: list[list[tuple[int, int]]] = [[] for _ in lines]
        views: dict[object, list[int]] = {self._ALL: list(range(len(lines)))}
        for index, (stream, _) in enumerate(lines):
            views.setdefault(stream, []).append(index)
        for view, indexes in views.items():
            self._scan(view, indexes, lines, spans)
        return [
            _apply(text, _merge(found), masker.mask_text)
            for (_, text), found in zip(lines, spans, strict=True)
        ]

    def _scan(
        self,
        view: object,
        indexes: list[int],
        lines: Sequence[tuple[Hashable, str]],
        spans: list[list[tuple[int, int]]],
    ) -> None:
        tail = self._tails.get(view, "")
        starts: list[int] = []
        at = len(tail)
        for index in indexes:
            starts.append(at)
            at += len(lines[index][1])
        joined = tail + "".join(lines[index][1] for index in indexes)
        keep = self.masker.longest - 1
        self._tails[view] = joined[len(joined) - keep :] if keep > 0 else ""
        for start, end in self.masker.spans(joined):
            # hand each range to the lines it covers (the tail's lines are stored already)
            for position, index in enumerate(indexes):
                line_start = starts[position]
                line_end = line_start + len(lines[index][1])
                if line_start >= end:
                    break
                if line_end > start and line_end > line_start:
                    spans[index].append((max(start, line_start) - line_start,
                                         min(end, line_end) - line_start))  # fmt: skip


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
