"""Confirmed words as caption posts for a platform: lines within its width, posted promptly.

A platform that takes captions from a third party (Zoom, YouTube Live, Teams, a stream's
CEA-608 track) shows each post as it arrives and cannot take one back, so only confirmed words
are posted (never the tentative tail), each exactly once, in order. Two wishes pull apart:
viewers read whole lines broken at phrase boundaries, and every word should reach them soon
after it was said. :class:`CaptionLines` serves both: words gather into the current display
line, which breaks where a phrase ends once it is two thirds full (else where the next word
would not fit), and what has gathered is posted as soon as a line ends, a sentence ends, the
speaker pauses, or its oldest word has waited ``hold`` seconds. A post may therefore continue
the line of the post before it (``Post.continues``); platforms that show posts as rolling
text join them seamlessly. Pure code, no I/O and no clock of its own: callers pass the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PHRASE_ENDS = (",", ";", ":", ".", "?", "!", "…", "—")
SENTENCE_ENDS = (".", "?", "!", "…")


@dataclass(frozen=True, slots=True)
class Post:
    """Words to send in one request: display lines, the first maybe continuing the last one."""

    lines: tuple[str, ...]
    continues: bool
    """Whether the first line goes on the display line the previous post ended on."""
    confirmed_at: float
    """When the oldest word of the post was confirmed (for the output's lag)."""
    words: int

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def then(self, later: Post) -> Post:
        """This post and a later one as a single post (what waited while a platform was slow)."""
        if later.continues and self.lines:
            lines = (*self.lines[:-1], f"{self.lines[-1]} {later.lines[0]}", *later.lines[1:])
        else:
            lines = (*self.lines, *later.lines)
        return Post(lines, self.continues, self.confirmed_at, self.words + later.words)


def merge(posts: list[Post]) -> Post:
    """Posts that waited, as one (they are never empty)."""
    merged = posts[0]
    for post in posts[1:]:
        merged = merged.then(post)
    return merged


@dataclass
class CaptionLines:
    """Confirmed text in, posts out, for a platform whose lines hold ``width`` characters."""

    width: int
    hold: float = 0.6
    """Longest a confirmed word waits for its line to fill before it is posted anyway (s)."""
    single_line: bool = False
    """Post each display line as soon as it is complete, so that no post holds more than one
    (a platform that shows each post as one caption line: Teams)."""
    column: int = 0
    """Characters on the current display line, posted or not."""
    _lines: list[list[str]] = field(default_factory=list)
    """Complete display lines not posted yet."""
    _words: list[str] = field(default_factory=list)
    """Words of the current display line not posted yet."""
    _continues: bool = False
    _since: float | None = None
    _last: str = ""

    def __post_init__(self) -> None:
        if self.width < 8:
            raise ValueError(f"caption width {self.width} is too narrow for words")

    def add(self, text: str, now: float) -> list[Post]:
        """Confirmed text (a delta: it may continue the last word without a space)."""
        posts: list[Post] = []
        glued = bool(text) and not text[0].isspace()
        for i, word in enumerate(text.split()):
            if i == 0 and glued and self._words and self.column + len(word) <= self.width:
                self._words[-1] += word  # the decoder went on inside the word
                self.column += len(word)
                self._last = self._words[-1]
            else:
                posts += self._place(word[: self.width], now)  # a wider "word" is cut
        if self._words and self._last.endswith(SENTENCE_ENDS):
            posts += self._post()
        return posts

    def tick(self, now: float) -> list[Post]:
        """Post what has waited ``hold`` seconds (call a few times a second)."""
        if self._since is not None and now - self._since >= self.hold - 1e-9:
            return self._post()
        return []

    def flush(self) -> list[Post]:
        """A pause or the end: post whatever waits."""
        return self._post()

    def _place(self, word: str, now: float) -> list[Post]:
        posts: list[Post] = []
        needed = len(word) + (1 if self.column else 0)
        if self.column and (
            self.column + needed > self.width
            or (self.column >= 2 * self.width / 3 and self._last.endswith(PHRASE_ENDS))
        ):
            if self._words:
                self._lines.append(self._words)
                self._words = []
            if self.single_line:
                posts = self._post()
            self.column, needed = 0, len(word)
        if self._since is None:
            self._since = now
            self._continues = self.column > 0  # lands on a line that holds posted words
        self._words.append(word)
        self.column += needed
        self._last = word
        return posts

    def _post(self) -> list[Post]:
        lines = [*self._lines, *([self._words] if self._words else [])]
        if not lines or self._since is None:
            return []
        post = Post(
            tuple(" ".join(line) for line in lines),
            self._continues,
            self._since,
            sum(len(line) for line in lines),
        )
        self._lines, self._words, self._since = [], [], None
        return [post]
