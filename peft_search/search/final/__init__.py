"""After the search: the final evaluation of the discovered design against the presets
(`evaluate.py`) and its export as a usable artefact (`export.py`). Imports ray and train only when
they run."""
