"""The experiment panel end to end, by calling its handlers: redraws after every member group, paper 3's
convergence figures, the display path a live kernel takes, and the static display without one."""
import pytest

import matplotlib
matplotlib.use("Agg")

from dropout_residual import widgets
from dropout_residual.store import load_runs
from dropout_residual.papers import get_experiment
from dropout_residual.widgets import ExperimentPanel


def test_redraws_after_each_group_and_resumes(tmp_path, monkeypatch):
    labels = get_experiment("paper1").labels()[:2]
    panel = ExperimentPanel("paper1", preset="smoke", labels=labels, root=tmp_path, progress=False, max_members=1)
    draws = []
    real = panel._draw
    def spy(*a, **k):
        real(*a, **k); draws.append(int(panel.runs["done"].sum()))
    monkeypatch.setattr(panel, "_draw", spy)
    res = panel.on_run()
    assert draws == [1, 2, 2], draws                    # a redraw after each one-member group, then the final one
    assert res.runs["done"].all() and res.runs["group"].nunique() == 2
    assert sorted(panel.results["label"]) == sorted(labels)
    assert set(panel.figures) == {"curves", "best", "heatmap"}
    # a second panel over the same store: Show stored draws them without training, Run trains nothing
    again = ExperimentPanel("paper1", preset="smoke", labels=labels, root=tmp_path, progress=False)
    assert len(again.on_show()) == 2 and "2 of 2" in again.status.value
    mtimes = {p: (tmp_path/"paper1"/p/"summary.json").stat().st_mtime_ns for p in res.runs["run_id"]}
    assert again.on_run().trained == 0
    assert mtimes == {p: (tmp_path/"paper1"/p/"summary.json").stat().st_mtime_ns for p in res.runs["run_id"]}


def test_paper3_panel_in_a_live_kernel_display_path(tmp_path, monkeypatch):
    "Paper 3 draws the dynamics chapter's figures; with a kernel the panel fills its Output widgets and shows as a widget."
    monkeypatch.setattr(widgets, "live_kernel", lambda: True)
    label = get_experiment("paper3").labels()[0]
    panel = ExperimentPanel("paper3", preset="smoke", labels=[label], root=tmp_path, progress=False)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "needs a live Jupyter kernel" in bundle["text/html"]
    panel.on_run()
    assert {"curves", "best", "cka", "settling", "per_vs_cka"} <= set(panel.figures)
    assert len(load_runs(tmp_path, "paper3")) == 1
    assert "skip mode" not in panel.describe()


def test_command_is_what_the_cli_parses(tmp_path):
    "The panel's command line is a valid `dropout-residual sweep` call with the panel's selection."
    import shlex
    from dropout_residual.cli import build_parser
    panel = ExperimentPanel("paper1", preset="quick", seeds=3, skip_mode="add", root=tmp_path/"my runs")
    panel.configs.value = panel.configs.options[:2]
    args = build_parser().parse_args(shlex.split(panel.command())[1:])
    assert (args.command, args.experiment, args.preset, args.seeds) == ("sweep", "paper1", "quick", 3)
    assert args.set == ["skip_mode=add"] and args.label == list(panel.configs.options[:2])
    assert args.runs == str(tmp_path/"my runs")


def test_static_env_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(widgets.WIDGETS_ENV, "static")
    assert not widgets.live_kernel()
    panel = ExperimentPanel("paper2", preset="smoke", labels=["fixed"], root=tmp_path)
    assert "application/vnd.jupyter.widget-view+json" not in panel._repr_mimebundle_()
    assert "ExperimentPanel: paper2" in repr(panel)
    with pytest.raises(ValueError, match="preset='huge'"): ExperimentPanel("paper2", preset="huge")
    with pytest.raises(ValueError, match="skip_mode='both'"): ExperimentPanel("paper1", skip_mode="both")
    panel.configs.value = ()
    with pytest.raises(ValueError, match="none selected"): panel.on_run()
    assert not panel.run_button.disabled
