"""One colour per method in every figure (tables.py's trade-off and curves plots, sweep.py's sensitivity plot):
the registered methods in a fixed order on matplotlib's tab20, its darker shade of each pair first; a name this
list does not know takes the next free colour in the order it is first seen."""
from __future__ import annotations

METHOD_ORDER = ("full", "frozen", "adapter", "bitfit", "dara", "lora", "lst", "m2ist", "unipt", "vlpet")
_UNKNOWN: list[str] = []


def method_colour(name: str) -> str:
    """The colour of a method, or of a table row of it ("lora [r8]", "lora (selected on val)")."""
    import matplotlib

    base = name.split(" [")[0].split(" (")[0]
    if base not in METHOD_ORDER and base not in _UNKNOWN:
        _UNKNOWN.append(base)
    i = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER) + _UNKNOWN.index(base)
    tab20 = matplotlib.colormaps["tab20"].colors
    return matplotlib.colors.to_hex(tab20[(2 * i) % 20 + (2 * i) // 20 % 2])
