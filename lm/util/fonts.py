"""Fonts for figures whose labels are tokens: Latin from DejaVu Sans, CJK from a packaged font.

matplotlib's own DejaVu Sans has no kana or kanji, so Japanese labels came out as empty boxes.
The CJK font is IPAexGothic, which the PyPI package `matplotlib-fontja` ships as a plain
.ttf (a core dependency of lm); we only read the file from that package, registering it with
matplotlib's font manager (`FontManager.addfont`), and never import the package, which would
change matplotlib's global settings. Where it is absent, Debian's `fonts-noto-cjk` is used.
Figures draw inside `context()`, whose font family is a list: matplotlib (>= 3.6) takes each
glyph from the first font in the list that has it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

SYSTEM_CJK = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # Debian's fonts-noto-cjk
    "/usr/share/fonts/truetype/ipaexfont-gothic/ipaexg.ttf",  # Debian's fonts-ipaexfont
)


def cjk_font_path() -> Path | None:
    """The CJK font file to use, or None when neither the package nor a system font exists."""
    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is not None and spec.submodule_search_locations:
        p = Path(next(iter(spec.submodule_search_locations))) / "fonts" / "ipaexg.ttf"
        if p.is_file():
            return p
    for s in SYSTEM_CJK:
        if Path(s).is_file():
            return Path(s)
    return None


@functools.cache
def families() -> tuple[str, ...]:
    """The font family list for figures: DejaVu Sans, then the CJK font when there is one."""
    path = cjk_font_path()
    if path is None:
        return ("DejaVu Sans",)
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(path))
    return ("DejaVu Sans", font_manager.FontProperties(fname=str(path)).get_name())


def context():
    """A matplotlib rc context whose text falls back to the CJK font."""
    from matplotlib import rc_context

    return rc_context({"font.family": list(families())})
