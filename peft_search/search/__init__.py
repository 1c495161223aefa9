"""Staged search: job spec, trial planning, decision statistics (and, on top, the controller).

`spec`, `plan` and `decide` are pure and fast: they import space, pydantic and pyarrow, never ray.
"""
