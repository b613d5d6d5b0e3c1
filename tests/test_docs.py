"""The README's options table against the code: one row per option, and the defaults and presets it shows."""

from __future__ import annotations

import ast
import dataclasses
import os

import pytest

from dicache.config import DEFAULT, GENERIC_BUDGET, PRESETS, DiCacheConfig

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")

#: the table's value columns and the configs they show
COLUMNS = {"`DiCacheConfig()`": DEFAULT, "other families": GENERIC_BUDGET, "Flux": PRESETS["flux"], "HunyuanVideo": PRESETS["hunyuan_video"],
           "Wan": PRESETS["wan"]}


def options_table(text: str):
    """(header cells, {option: row cells}) of the table under the README's ``## Options``."""
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    header, rows = split[0], split[2:]  # split[1] is the |---| line
    for cells in rows:
        assert len(cells) == len(header), f"a row of the options table has {len(cells)} cells, not {len(header)}: {cells[0]}"
    return header, {cells[0].strip("`"): cells for cells in rows}


def cell_value(cell: str):
    """A table cell as the value it shows: empty for None, Python literals as such, bare words as strings."""
    if cell == "":
        return None
    try:
        return ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return cell


def test_the_options_table_has_one_row_per_option():
    _, rows = options_table(open(README, encoding="utf-8").read())
    fields = [f.name for f in dataclasses.fields(DiCacheConfig)]
    assert sorted(rows) == sorted(fields)


@pytest.mark.parametrize("column", sorted(COLUMNS))
def test_the_options_table_shows_the_defaults_and_presets(column):
    header, rows = options_table(open(README, encoding="utf-8").read())
    i = header.index(column)
    config = COLUMNS[column]
    wrong = {name: (cells[i], getattr(config, name)) for name, cells in rows.items()
             if cell_value(cells[i]) != getattr(config, name)}
    assert not wrong, f"README column {column!r} disagrees with the code (shown, actual): {wrong}"


def test_the_table_reader_sees_a_wrong_value():
    text = ("\n## Options\n\n| option | meaning | Flux |\n| --- | --- | --- |\n| `threshold` | δ | 0.3 |\n"
            "| `warmup` | calls | (1, 2) |\n\n## Next\n")
    header, rows = options_table(text)
    assert header == ["option", "meaning", "Flux"]
    assert cell_value(rows["threshold"][2]) == 0.3 != PRESETS["flux"].threshold
    assert cell_value(rows["warmup"][2]) == (1, 2)
    assert cell_value("auto") == "auto" and cell_value("") is None and cell_value("True") is True
    with pytest.raises(AssertionError):
        options_table("\n## Options\n\n| a | b |\n| --- | --- |\n| `x` | 1 | 2 |\n")
