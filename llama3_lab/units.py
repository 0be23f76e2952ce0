"""Units: the one byte formatter every printout, error message, figure and widget uses."""

from __future__ import annotations

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: float, *, digits: int = 1, exact: bool = False) -> str:
    """A byte count in binary units: ``1536 -> '1.5 KiB'``, ``16060522496 -> '15.0 GiB'``.

    ``digits``: decimals after the point (bytes themselves are whole). ``exact=True`` puts the exact
    count first and, from a GiB on, the decimal gigabytes after: ``'16,060,522,496 B = 14.96 GiB
    (16.06 GB)'`` (with ``digits=2``), how vendors and papers quote sizes.
    """
    value, unit = float(n), _BINARY_UNITS[0]
    for unit in _BINARY_UNITS:
        if abs(value) < 1024 or unit == _BINARY_UNITS[-1]:
            break
        value /= 1024
    text = f"{n:,.0f} B" if unit == "B" else f"{value:,.{digits}f} {unit}"
    if not exact or unit == "B":
        return text
    decimal = f" ({n / 1e9:,.{digits}f} GB)" if abs(n) >= 1024**3 else ""
    return f"{n:,.0f} B = {text}{decimal}"
