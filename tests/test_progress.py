"""automl.progress: bars, stages and notes as events a service streams, and cancellation by a listener,
on their own, in the search, and through a tiny real fit (stages in order; a cancelled fit leaves no
run and its re-run reuses what was finished)."""

from __future__ import annotations

import contextvars
import io
import json
import threading
import time

import numpy as np
import pytest

from automl import progress, search
from automl.errors import AutomlError


def recorded(kinds=("stage", "progress", "note")):
    events: list[progress.Event] = []
    return events, lambda e: events.append(e) if e.kind in kinds else None


# --- bars ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("disable", [False, True])
def test_a_bar_reports_creation_updates_postfix_and_close_shown_or_not(disable):
    events, listener = recorded()
    with progress.listen(listener):
        bar = progress.bar(total=4, desc="embed x", unit="img", disable=disable, file=io.StringIO())
        bar.update(1)
        time.sleep(0.02)
        bar.set_postfix(best=np.float64(0.81), trials=np.int64(12))
        bar.update(2)
        bar.close()
        bar.close()  # once closed, silent
    assert [(e.kind, e.desc, e.unit, e.total) for e in events] == [("progress", "embed x", "img", 4)] * 5
    assert [e.done for e in events] == [0, 1, 1, 3, 3]
    assert [e.state for e in events] == [None] * 4 + ["closed"]
    assert events[0].info == {} and events[2].info == events[4].info == {"best": 0.81, "trials": 12}
    assert events[0].eta_s is None and events[3].eta_s == pytest.approx(events[3].elapsed_s / 3, rel=0.5)
    assert all(e.elapsed_s >= 0 and e.stage is None for e in events)
    assert json.loads(json.dumps(events[2].to_dict(), allow_nan=False))["info"] == {"best": 0.81, "trials": 12}
    assert bar.n == 3  # a disabled bar counts too


def test_a_bar_looks_exactly_like_tqdm_on_the_terminal():
    from tqdm.auto import tqdm

    def draw(make) -> str:
        out = io.StringIO()
        style = dict(file=out, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}{postfix}", ncols=60, mininterval=0)
        bar = make(total=5, desc="a", unit="img", **style)
        bar.update(1)
        bar.set_postfix_str("best 1", refresh=False)
        bar.update(2)
        bar.set_postfix(loss="0.1")
        bar.set_description("b")
        bar.reset(total=4)
        bar.update(4)
        bar.close()
        for _ in make(range(3), desc="c", leave=False, **style):
            pass
        return out.getvalue()

    with progress.listen(lambda e: None):
        assert draw(progress.bar) == draw(tqdm)


def test_an_iterated_bar_reports_every_item_and_closes():
    events, listener = recorded()
    with progress.listen(listener):
        assert list(progress.bar(["a", "b", "c"], desc="compare", disable=True)) == ["a", "b", "c"]
    assert [(e.done, e.total, e.state) for e in events] == [(0, 3, None), (1, 3, None), (2, 3, None), (3, 3, None),
                                                           (3, 3, "closed")]


def test_postfix_without_refresh_rides_on_the_next_update_and_info_can_be_given():
    events, listener = recorded()
    with progress.listen(listener):
        bar = progress.bar(total=2, desc="dcgan", disable=True)
        bar.set_postfix_str("loss_D 0.5", refresh=False, info={"loss_d": 0.5, "nan": float("nan")})
        bar.update(1)
        bar.set_postfix_str("seed 3")
    assert [e.done for e in events] == [0, 1, 1]
    assert events[1].info == {"loss_d": 0.5, "nan": None} and events[2].info == {"postfix": "seed 3"}


def test_without_a_listener_nothing_is_made_and_nothing_changes():
    bar = progress.bar(total=2, disable=True)
    bar.update(2)
    bar.close()
    progress.note("nobody listens")
    progress.checkpoint()
    assert bar.n == 2


# --- listen, stage, note, checkpoint ---------------------------------------------------------------


def test_listeners_nest_outermost_first_and_end_with_their_block():
    calls = []
    with progress.listen(lambda e: calls.append(("outer", e.desc))):
        progress.note("one")
        with progress.listen(lambda e: calls.append(("inner", e.desc))):
            progress.note("two")
        progress.note("three")
    progress.note("four")
    assert calls == [("outer", "one"), ("outer", "two"), ("inner", "two"), ("outer", "three")]


def test_stages_nest_the_innermost_wins_and_a_failure_is_reported_and_raised():
    events, listener = recorded()
    with progress.listen(listener):
        with progress.stage("compare"):
            progress.note("a")
            with pytest.raises(KeyError):
                with progress.stage("search"):
                    progress.checkpoint()
                    raise KeyError("x")
            progress.note("b")
    assert [(e.kind, e.stage, e.state) for e in events] == [
        ("stage", "compare", "started"), ("note", "compare", None), ("stage", "search", "started"),
        ("progress", "search", None), ("stage", "search", "failed"), ("note", "compare", None),
        ("stage", "compare", "finished")]
    assert events[4].info == {"error": "KeyError"} and events[4].elapsed_s >= 0
    checkpoint = events[3]
    assert (checkpoint.desc, checkpoint.done, checkpoint.total) == ("", None, None)


def test_a_note_is_an_event_and_echoes_beside_the_bars_when_asked(capsys):
    events, listener = recorded()
    with progress.listen(listener), progress.stage("search"):
        progress.note("search: 3 trials in 1.0 s", echo=True, trials=3, left=None)
        progress.note("quiet")
    _, err = capsys.readouterr()
    assert err == "search: 3 trials in 1.0 s\n"
    notes = [e for e in events if e.kind == "note"]
    assert [(n.desc, n.stage, n.info) for n in notes] == [
        ("search: 3 trials in 1.0 s", "search", {"trials": 3, "left": None}), ("quiet", "search", {})]


def test_a_listener_cancels_the_code_that_reported_and_the_bar_still_closes():
    seen = []

    def cancel_at_two(event):
        seen.append(event.done)
        if event.done == 2 and event.state is None:
            raise progress.Cancelled()

    bar = None
    with progress.listen(cancel_at_two):
        with pytest.raises(progress.Cancelled, match="^cancelled$") as info:
            with progress.bar(total=5, disable=True) as bar:
                for _ in range(5):
                    bar.update(1)
    assert isinstance(info.value, AutomlError) and bar.n == 2 and seen == [0, 1, 2, 2]


def test_threads_report_only_with_the_context_copied():
    events, listener = recorded()
    with progress.listen(listener), progress.stage("embedding"):
        plain = threading.Thread(target=progress.note, args=("plain",))
        copied = threading.Thread(target=contextvars.copy_context().run, args=(progress.note, "copied"))
        for t in (plain, copied):
            t.start()
            t.join()
    assert [(e.desc, e.stage) for e in events if e.kind == "note"] == [("copied", "embedding")]


# --- the search ------------------------------------------------------------------------------------


def features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    return {"xception": rng.normal(size=(60, 8)) + y[:, None] * 0.6}, y


def run(db, n_trials=8):
    return search.run_search(*features(), heads=["logreg-elasticnet", "svc-rbf"], metric="accuracy", cv=3, seed=0,
                             storage=f"sqlite:///{db}", name="t", n_trials=n_trials, timeout=None, progress=False)


def history(study) -> list:
    return [(t.params, t.value) for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


def test_a_search_cancelled_mid_trial_stops_and_resumes_like_an_interrupted_one(tmp_path):
    uninterrupted = run(tmp_path / "whole.db")
    checkpoints = []

    def cancel_in_trial_four(event):
        if event.kind == "progress" and event.desc == "" and event.done is None:
            checkpoints.append(event)
            if len(checkpoints) == 8:  # 2 checkpoints a trial (two folds, then the third): trial 4's second
                raise progress.Cancelled("cancelled through the API")

    with progress.listen(cancel_in_trial_four), pytest.raises(progress.Cancelled):
        run(tmp_path / "cancelled.db")
    import optuna

    cancelled = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'cancelled.db'}")
    # Stopped, not recorded as a failed trial with the search going on: the trial is interrupted.
    assert len(history(cancelled)) == 3 and search.trial_counts(cancelled) == {"complete": 3, "interrupted": 1}
    resumed = run(tmp_path / "cancelled.db")
    assert history(resumed) == history(uninterrupted)
    assert search.trial_counts(resumed) == {**search.trial_counts(uninterrupted), "interrupted": 1}


def test_the_search_bar_carries_trials_and_the_best_score(tmp_path):
    events, listener = recorded(("progress", "note"))
    with progress.listen(listener):
        study = run(tmp_path / "s.db", n_trials=4)
    bar = [e for e in events if e.desc == "search"]
    assert [e.done for e in bar if e.state is None] == sorted(e.done for e in bar if e.state is None)
    assert bar[0].total == 4 and bar[-1].state == "closed" and bar[-1].done == 4
    best = search.best_trial(study)
    assert bar[-1].info == {"trials": 4, "best": best.value, "metric": "accuracy",
                            "pipeline": search.describe_trial(best)}
    estimate, = [e for e in events if e.kind == "note"]
    assert estimate.desc.startswith("search: 3 trials in ") and estimate.info["left"] == 1


# --- a tiny real fit -------------------------------------------------------------------------------

SMALL = dict(extractors="xception", heads="logreg-elasticnet", weights="none", image_size=71, precision="float32",
             trials=3, cv=2)


@pytest.fixture(scope="module")
def cancelled_then_rerun(tmp_path_factory):
    """A fit a listener cancels at the search's first event, then the same fit run again, listened to."""
    from automl.api import recipe_of
    from automl.demo import make_demo_dataset
    from automl.pipeline import fit

    data = make_demo_dataset(tmp_path_factory.mktemp("digits"), per_class=8, size=16, classes=3, seed=0)
    store = tmp_path_factory.mktemp("store")
    recipe = recipe_of(data, store=str(store), **SMALL)
    before: list[progress.Event] = []

    def cancel_at_search(event):
        before.append(event)
        if event.stage == "search":
            raise progress.Cancelled()

    with progress.listen(cancel_at_search), pytest.raises(progress.Cancelled) as cancelled:
        fit(recipe, progress=False)
    after, listener = recorded()
    with progress.listen(listener):
        result = fit(recipe, progress=False)
    return store, before, cancelled.value, after, result


def test_a_fit_reports_its_stages_in_order_with_monotone_bars(cancelled_then_rerun):
    _, before, _, after, result = cancelled_then_rerun
    stages = [(e.stage, e.state) for e in after if e.kind == "stage"]
    assert stages == [(s, state) for s in ("embedding", "search", "refit", "evaluate")
                      for state in ("started", "finished")]
    bars: dict[tuple, list] = {}  # (fit, stage, bar) -> its done counts in order
    for fit, events in (("cancelled", before), ("rerun", after)):
        for e in events:
            if e.kind == "progress" and e.done is not None:
                bars.setdefault((fit, e.stage, e.desc), []).append(e.done)
    assert {(stage, desc.split(" ")[0]) for _, stage, desc in bars} >= {
        ("embedding", "embed"), ("search", "search"), ("evaluate", "embed")}
    assert all(done == sorted(done) for done in bars.values())
    search_bar = [e for e in after if e.desc == "search"]
    assert search_bar[-1].done == 3 and search_bar[-1].info["trials"] == 3
    assert search_bar[-1].info["best"] == pytest.approx(result.record.best.cv_score)


def test_a_cancelled_fit_leaves_no_run_and_its_rerun_reuses_the_embeddings(cancelled_then_rerun):
    store, before, cancelled, _, result = cancelled_then_rerun
    assert isinstance(cancelled, progress.Cancelled)
    assert [(e.stage, e.state) for e in before if e.kind == "stage"] == [
        ("embedding", "started"), ("embedding", "finished"), ("search", "started")]
    assert any(e.kind == "progress" and e.stage == "embedding" and e.done for e in before)  # it embedded
    runs = [p for p in (store / "runs").iterdir() if p.is_dir()] if (store / "runs").is_dir() else []
    assert runs == [result.run_dir]  # the cancelled fit wrote no run; the re-run one
    train, test = result.embeddings
    assert train.computed == 0 and train.cache_hits == train.images  # embedded before the cancel, reused
    assert test.computed == test.images  # the test split is embedded once, at the end
