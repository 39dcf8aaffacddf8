"""Text hygiene: NFC, legacy encodings that look like text but are not Unicode, and documents too long to sample.

Burmese written in the Zawgyi font encoding uses Myanmar code points with other meanings; trained on as-is it
silently splits the language's vocabulary in two. It is detected per line and converted to Unicode.

A document sampled whole or not at all, and a sentence longer than SentencePiece takes (it skips those without a
word), would drop a language whose file is one huge line: documents over MAX_PIECE_CHARS are counted here and cut
into pieces for sampling (tokenizer/sampling.py).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

from myanmartools import ZawgyiDetector
from para import zg_to_unicode

ZAWGYI_SCRIPT = "Mymr"
ZAWGYI_THRESHOLD = 0.95
MAX_PIECE_CHARS = 1 << 14  # at most 64 KiB of UTF-8: SentencePiece's max_sentence_length (tokenizer/spm.py)
_detector: ZawgyiDetector | None = None


def _zawgyi_probability(text: str) -> float:
    global _detector
    if _detector is None:
        _detector = ZawgyiDetector()
    return _detector.get_zawgyi_probability(text)


@dataclass
class HygieneStats:
    """What was skipped or repaired, per language."""

    invalid_utf8: Counter[str] = field(default_factory=Counter)
    nfc_changed: Counter[str] = field(default_factory=Counter)
    zawgyi_converted: Counter[str] = field(default_factory=Counter)
    long_documents: Counter[str] = field(default_factory=Counter)

    def count_invalid_utf8(self, language: str) -> None:
        self.invalid_utf8[language] += 1

    def add(self, other: HygieneStats) -> None:
        """Adds another reading's counts to these."""
        for counter in fields(self):
            getattr(self, counter.name).update(getattr(other, counter.name))

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "invalid_utf8_lines": dict(self.invalid_utf8),
            "nfc_changed_lines": dict(self.nfc_changed),
            "zawgyi_converted_lines": dict(self.zawgyi_converted),
            "long_documents": dict(self.long_documents),
        }

    def warnings(self) -> list[str]:
        lines = [f"{lang}: {n} lines were not valid UTF-8 and were skipped" for lang, n in self.invalid_utf8.items()]
        lines += [
            f"{lang}: {n} lines were Zawgyi-encoded and were converted to Unicode"
            for lang, n in self.zawgyi_converted.items()
        ]
        lines += [
            f"{lang}: {n} documents were not in Unicode's composed form (NFC) and were normalized to it"
            for lang, n in self.nfc_changed.items()
        ]
        lines += [
            f"{lang}: {n} documents over {MAX_PIECE_CHARS:,} characters were cut into pieces of at most that to be "
            "sampled"
            for lang, n in self.long_documents.items()
        ]
        return lines


def clean_text(language: str, text: str, stats: HygieneStats) -> str:
    if language.endswith(ZAWGYI_SCRIPT) and _zawgyi_probability(text) > ZAWGYI_THRESHOLD:
        text = zg_to_unicode(text, force=True)
        stats.zawgyi_converted[language] += 1
    normal = unicodedata.normalize("NFC", text)
    if normal != text:
        stats.nfc_changed[language] += 1
    if len(normal) > MAX_PIECE_CHARS:
        stats.long_documents[language] += 1
    return normal


def pieces(text: str) -> Iterator[str]:
    """`text` in pieces of at most MAX_PIECE_CHARS characters, cut after the last space or line break before the
    limit where one is in its second half (text without spaces, as Thai or Chinese, is cut at the limit)."""
    start = 0
    while len(text) - start > MAX_PIECE_CHARS:
        end = start + MAX_PIECE_CHARS
        cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
        cut = cut + 1 if cut > start + MAX_PIECE_CHARS // 2 else end
        yield text[start:cut]
        start = cut
    yield text[start:]
