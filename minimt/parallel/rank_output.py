"""One output stream of a rank (its stdout or stderr pipe) cut into what the caller prints.

Each line is printed once it ends, prefixed "[rank r] " (or, raw, the text as it comes). A line that carriage returns rewrite (a
tqdm bar: "\r 10%|#  |", "\r 20%|## |", ...) is redrawn each time a read brings a new state, as
"\r[rank r] 20%|## |", so the caller's terminal or notebook cell shows it live. Several ranks
drawing bars on one line overwrite each other: show a bar on one rank only, e.g.
`tqdm(..., disable=ctx.rank != 0)`, and print the others' progress as lines.
The cost is linear in the output: a line without newlines is kept as a list of pieces and joined
once, when it ends (joining it at every read made 80 MB per rank take minutes).
"""
from __future__ import annotations

import codecs


class RankOutput:
    """Feed it the bytes a rank wrote; it returns the text to print and the lines that ended."""

    BAR_MAX_CHARS = 4096  # a longer line rewritten by "\r" is printed only once it ends

    def __init__(self, prefix: str, raw: bool = False):
        self.prefix = prefix
        self.raw = raw  # pass the text on as it comes: partial lines, no prefix
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pieces: list[str] = []  # the current line, not yet ended
        self.chars = 0               # its length
        self.on_bar = False          # a "\r" rewrote the current line: it is a progress line
        self.held = ""               # a "\r" that ended the last read: maybe half of "\r\n"

    def feed(self, data: bytes) -> tuple[str, list[str]]:
        """(text for the caller's stream, the lines that ended); data=b"" means end of file."""
        final = not data
        text, self.held = self.held + self.decoder.decode(data, final=final), ""
        if self.raw:
            return text, []
        if text.endswith("\r") and not final:
            text, self.held = text[:-1], "\r"
        out, ended = [], []
        parts = text.split("\n")
        if len(parts) > 1 and "\r" not in text and not self.on_bar:  # plain lines: one join
            ended = ["".join(self.pieces) + parts[0], *parts[1:-1]]
            out.append(self.prefix + ("\n" + self.prefix).join(ended) + "\n")
            self.pieces, self.chars, parts = [], 0, parts[-1:]
        for i, part in enumerate(parts):
            if i:  # a newline came before this part
                ended.append(self._end_line(out))
            if part.endswith("\r") and i < len(parts) - 1:
                part = part[:-1]  # "\r\n" is a newline
            if "\r" in part:  # what follows the last "\r" replaces the line
                part = part.rsplit("\r", 1)[1]
                self.pieces, self.chars, self.on_bar = [], 0, True
            if part:
                self.pieces.append(part)
                self.chars += len(part)
        if final and (self.pieces or self.on_bar):
            ended.append(self._end_line(out))
        elif self.on_bar and self.pieces and self.chars <= self.BAR_MAX_CHARS:
            out.append(f"\r{self.prefix}{''.join(self.pieces)}")  # the bar's latest state
        return "".join(out), ended

    def _end_line(self, out: list[str]) -> str:
        line = "".join(self.pieces)
        if self.on_bar and not line:   # "\r\n" after a bar: the bar stays as last drawn
            out.append("\n")
        else:
            out.append(f"{chr(13) if self.on_bar else ''}{self.prefix}{line}\n")
        self.pieces, self.chars, self.on_bar = [], 0, False
        return line
