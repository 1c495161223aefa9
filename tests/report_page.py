"""The parts of a run's HTML report that tests read (tests/test_report.py, test_search_run.py)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class Page(HTMLParser):
    """The parts of the report the tests read: images, decisions tables' cells, trial rows, text."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[dict] = []
        self.decisions: dict[int, dict[str, dict[str, str]]] = {}  # stage -> choice -> field -> data-value
        self.decision_lines: dict[int, dict] = {}
        self.trials: list[dict] = []
        self.text: list[str] = []
        self._stage = None
        self._choice = None
        self._section_stage = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-stage" in a:
            self._section_stage = int(a["data-stage"])
        if tag == "img":
            self.images.append({**a, "stage": self._section_stage})
        if tag == "table" and "decisions" in (a.get("class") or ""):
            self._stage = int(a["data-stage"])
            self.decisions[self._stage] = {}
        if tag == "tr" and "data-choice" in a and self._stage is not None:
            self._choice = a["data-choice"]
            self.decisions[self._stage][self._choice] = {}
        if tag == "td" and "data-field" in a and self._choice is not None:
            self.decisions[self._stage][self._choice][a["data-field"]] = a.get("data-value")
        if tag == "tr" and "data-trial" in a:
            self.trials.append(a)
        if tag == "p" and "data-kept" in a:
            self.decision_lines[self._section_stage] = a

    def handle_endtag(self, tag):
        if tag == "table":
            self._stage, self._choice = None, None

    def handle_data(self, data):
        self.text.append(data)


def read_page(index: Path) -> Page:
    return Page(index.read_text(encoding="utf-8"))
