"""Fonts for plot text: factor levels and names may be in any script.

Matplotlib draws with one font family unless given a list; DejaVu Sans (its default) has no CJK,
so a factor level such as "水彩" came out as boxes. Plots use DejaVu Sans first, then any installed
font from `FALLBACK_FAMILIES` for the characters it lacks. Characters no installed font has are
found before drawing (`undrawable`) so the report can say so once, instead of matplotlib warning
once per glyph.
"""

from __future__ import annotations

import contextlib
import functools
import unicodedata
import warnings
from collections.abc import Iterable, Iterator

PRIMARY = "DejaVu Sans"
FALLBACK_FAMILIES = (  # tried in this order for characters DejaVu Sans lacks
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans",
    "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback", "Microsoft YaHei", "PingFang SC",
    "Hiragino Sans", "Apple SD Gothic Neo", "Malgun Gothic", "Noto Sans", "Noto Sans Arabic",
    "Noto Sans Hebrew", "Noto Sans Devanagari", "Noto Sans Thai", "Arial Unicode MS",  # outline fonts only
)
FONT_HINT = "install a font that has them, e.g. Noto Sans CJK (Debian: fonts-noto-cjk) or fonts-wqy-microhei"


@functools.cache
def plot_families() -> tuple[str, ...]:
    """DejaVu Sans, then the installed fallback families (fonts installed after matplotlib built its
    font cache included)."""
    from matplotlib import font_manager

    known = {f.fname for f in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:
            with contextlib.suppress(Exception):  # a font file matplotlib cannot read is not ours to fix
                font_manager.fontManager.addfont(path)
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return (PRIMARY, *(f for f in FALLBACK_FAMILIES if f in installed))


@functools.cache
def _charmap(family: str) -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    return frozenset(FT2Font(path).get_charmap())


def undrawable(texts: Iterable[str], families: Iterable[str] | None = None) -> str:
    """The characters of `texts` (sorted, once each) that no font of `families` (default: the plot
    fonts) has; spaces and control characters do not count."""
    maps = [_charmap(f) for f in (plot_families() if families is None else families)]
    chars = {ch for text in texts for ch in str(text)
             if not ch.isspace() and unicodedata.category(ch)[0] != "C"}
    return "".join(sorted(ch for ch in chars if not any(ord(ch) in m for m in maps)))


@contextlib.contextmanager
def plot_fonts() -> Iterator[None]:
    """Figures made and saved inside use the plot fonts, without matplotlib's per-glyph warnings
    (`undrawable` reports those characters once), and show every text literally: a '$' in a prompt
    or level is a dollar sign, not the start of mathtext."""
    import matplotlib

    with matplotlib.rc_context({"font.family": list(plot_families()), "text.parse_math": False}), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        yield
