"""Run storage: the run directory's layout, atomic writes and clock (`run_dir.py`), and the trial
records with `results.parquet` (`records.py`). Every file of a run is read and written through these
modules (the one place where object storage will plug in). Imports pyarrow; nothing else of search.
"""
