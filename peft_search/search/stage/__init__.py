"""One refinement stage: its plan (`plan.py`: which designs, tasks and seeds, written before any
trial starts), its Ray Tune experiment (`experiment.py`) and its decision statistics (`decide.py`).
plan and decide are pure (space, pyarrow, numpy); experiment imports ray."""
