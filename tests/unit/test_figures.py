"""Specification of :mod:`koiitasks.testing.figures`: how tests count and the report reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from koiitasks.testing import figures


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A figures folder named by KOII_FIGURES_DIR."""
    monkeypatch.setenv(figures.ENV, str(tmp_path / "figures"))
    return tmp_path / "figures"


class TestRecord:
    """Tests add to figures only when a run asks for them."""

    def test_without_the_variable_nothing_is_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A test run by hand leaves no figures behind."""
        monkeypatch.delenv(figures.ENV, raising=False)
        monkeypatch.chdir(tmp_path)
        figures.record("kill_points")
        assert list(tmp_path.iterdir()) == []

    def test_records_add_up_per_figure(self, folder: Path) -> None:
        """Every record of a figure is summed; figures never recorded count zero."""
        figures.record("kill_points")
        figures.record("kill_points", 2)
        figures.record("hostile_inputs", 5)
        totals = figures.collect(folder)
        assert totals["kill_points"] == 3
        assert totals["hostile_inputs"] == 5
        assert totals["tamper_cases"] == 0

    def test_an_unknown_figure_is_refused(self, folder: Path) -> None:
        """A misspelt figure fails the test that records it instead of vanishing."""
        with pytest.raises(KeyError, match="kill_pionts"):
            figures.record("kill_pionts")
        assert not folder.exists()


class TestCheckAndReport:
    """What the check command and the report make of the counts."""

    def test_every_figure_below_its_minimum_is_named(self, folder: Path) -> None:
        """A run short of the asked-for counts fails, naming each figure that is short."""
        figures.record("kill_points", 49)
        problems = figures.check(folder)
        assert any(p.startswith("SIGKILL points survived") and "49" in p for p in problems)
        assert any("share of those S3 calls" in p for p in problems)

    def test_a_run_that_reaches_every_minimum_passes(self, folder: Path) -> None:
        """Counts at their minimums, and an S3 fault share of 10%, pass."""
        for name, figure in figures.FIGURES.items():
            figures.record(name, figure.minimum)
        figures.record("s3_calls", 10 * figures.FIGURES["s3_faults"].minimum - 100)
        assert figures.check(folder) == []

    def test_no_folder_is_a_problem_saying_how_to_make_one(self, tmp_path: Path) -> None:
        """Checking before any run says to run the suite with the variable set."""
        missing = tmp_path / "none"
        (problem,) = figures.check(missing)
        assert (
            problem
            == f"no figures in {missing}: run the whole suite with {figures.ENV}={missing} first"
        )

    def test_render_writes_the_table_between_the_markers_only(
        self, folder: Path, tmp_path: Path
    ) -> None:
        """The report keeps everything around its figures block and then shows the run."""
        figures.record("kill_points", 70)
        doc = tmp_path / "reliability.md"
        doc.write_text(f"# Title\n\n{figures.BEGIN}\nold\n{figures.END}\n\nAfter.\n")
        figures.render(folder, doc)
        text = doc.read_text()
        assert text.startswith("# Title\n\n")
        assert text.endswith(f"{figures.END}\n\nAfter.\n")
        assert "| SIGKILL points survived by a real `koiitasks run` process | 70 |" in text
        assert figures.shows(doc, figures.collect(folder))
