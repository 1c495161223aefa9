"""Ray clusters: connecting to one or starting Ray locally (`connect.py`), and submitting a search to
a running cluster as a Ray Job (`submit.py`). Imports ray and peft_search.errors only."""
