"""The shared training loop's bookkeeping, on a one-weight model and a fake clock: which steps
log, evaluate and checkpoint, the samples/s and data-wait figures of each logged window, what
only rank 0 does, and one-line errors from data-loader workers. These tests are the
`training-loop` row of `nox -s mutants` (docs/testing.md)."""

from __future__ import annotations

import types

import pytest
import torch

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.runtime import World
from soundnet_cli.training import loop, rundir
from soundnet_cli.training.loop import Schedule, run_loop

BATCH = 8


class Clock:
    """``time.perf_counter`` for the loop: the data of step s takes s seconds to arrive, the
    step's own work 1 second."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class Board:
    """A TensorBoard writer that remembers its scalars."""

    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))

    def close(self):
        self.closed = True


def train(
    tmp_path,
    monkeypatch,
    *,
    steps=7,
    start=0,
    world=World(0, 1, 0),
    scores=None,
    device="cpu",
    clock=None,
):
    """Run the loop with log_every=2, eval_every=3, checkpoint_every=4; returns the result and
    what it did (losses computed, evaluations, checkpoints, on_step calls, board)."""
    clock = clock or Clock()
    board = Board()
    seen = types.SimpleNamespace(losses=[], evaluations=[], saved=[], on_step=[], board=board)
    monkeypatch.setattr(loop, "time", clock)
    seen.boards = []
    monkeypatch.setattr(loop, "tensorboard", lambda run_dir: seen.boards.append(run_dir) or board)
    monkeypatch.setattr(
        loop, "save_training_state", lambda path, m, o, step, settings: seen.saved.append(step)
    )
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = {"n": start}

    def batches():
        while True:
            step["n"] += 1
            clock.now += step["n"]  # waiting for data
            yield torch.full((BATCH, 1), float(step["n"]))

    def compute(batch):
        clock.now += 1.0
        loss = model(batch).pow(2).mean()
        seen.losses.append(float(loss.detach()))
        return loss, {"head": 2 * loss}

    def evaluate():
        seen.evaluations.append(step["n"])
        return scores(step["n"]) if scores else {"agreement": step["n"] / 10}

    result = run_loop(
        run_dir=tmp_path,
        model=model,
        optimizer=optimizer,
        batches=batches(),
        compute_loss=compute,
        schedule=Schedule(steps, 2, 3, 4, BATCH),
        start=start,
        world=world,
        device=device,
        settings={},
        evaluate=evaluate,
        on_step=seen.on_step.append,
    )
    return result, seen


def test_steps_log_evaluate_and_checkpoint_on_their_schedule(tmp_path, monkeypatch):
    result, seen = train(tmp_path, monkeypatch)
    assert result.steps == 7
    assert result.losses == list(zip(range(1, 8), seen.losses, strict=True))
    assert seen.evaluations == [3, 6, 7]  # every 3 steps and the last
    assert seen.saved == [4, 7]  # every 4 steps and the last
    assert result.scores == {"agreement": 0.7}
    rows = rundir.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 7]  # every 2 steps and each evaluation
    assert [r["loss"] for r in rows] == [seen.losses[s - 1] for s in (2, 3, 4, 6, 7)]
    assert [r["heads"] for r in rows] == [{"head": 2 * r["loss"]} for r in rows]
    assert [r.get("agreement") for r in rows] == [
        None,
        {"agreement": 0.3},
        None,
        {"agreement": 0.6},
        {"agreement": 0.7},
    ]
    assert [m.step for m in seen.on_step] == [2, 3, 4, 6, 7]
    expected = []
    for r in rows:
        expected.append(("loss", r["loss"], r["step"]))
        expected += [(f"agreement/{k}", v, r["step"]) for k, v in r.get("agreement", {}).items()]
    assert seen.board.scalars == expected
    assert seen.board.closed and seen.boards == [tmp_path]


def test_each_logged_window_reports_its_own_samples_per_second_and_data_wait(tmp_path, monkeypatch):
    """Step s waits s seconds for data and works 1 s: the windows since the last log are steps
    {1, 2}, {3}, {4}, {5, 6}, {7}."""
    _, seen = train(tmp_path, monkeypatch)
    rows = rundir.read_metrics(tmp_path)
    windows = [(1, 2), (3,), (4,), (5, 6), (7,)]
    for row, window in zip(rows, windows, strict=True):
        waited, total = sum(window), sum(window) + len(window)
        assert row["samples_per_s"] == pytest.approx(BATCH * len(window) / total, abs=1e-3)
        assert row["data_wait"] == pytest.approx(waited / total, abs=1e-4)
    assert [m.samples_per_s for m in seen.on_step] == pytest.approx([16 / 5, 2, 8 / 5, 16 / 13, 1])


def test_on_a_gpu_each_step_is_timed_to_its_end(tmp_path, monkeypatch):
    """CUDA kernels run asynchronously: without a synchronize the samples/s figure would time
    the launches. The model here stays on the CPU; only the device name matters."""
    synchronized = []
    monkeypatch.setattr(torch.cuda, "synchronize", synchronized.append)
    train(tmp_path, monkeypatch)
    assert synchronized == []
    train(tmp_path, monkeypatch, device="cuda:1")
    assert synchronized == ["cuda:1"] * 7


class StillClock(Clock):
    """A clock too coarse to see a step: every window lasts 0 s."""

    def perf_counter(self):
        return 0.0


def test_a_window_too_short_to_time_reports_zero_rates(tmp_path, monkeypatch):
    train(tmp_path, monkeypatch, clock=StillClock())
    rows = rundir.read_metrics(tmp_path)
    assert [(r["samples_per_s"], r["data_wait"]) for r in rows] == [(0.0, 0.0)] * 5


def test_an_empty_evaluation_keeps_the_last_scores(tmp_path, monkeypatch):
    result, seen = train(
        tmp_path, monkeypatch, scores=lambda step: {} if step == 7 else {"a": step}
    )
    assert result.scores == {"a": 6}
    assert "agreement" not in rundir.read_metrics(tmp_path)[-1]


def test_a_resumed_run_continues_from_its_step(tmp_path, monkeypatch):
    result, seen = train(tmp_path, monkeypatch, start=4)
    assert result.steps == 7 and [s for s, _ in result.losses] == [5, 6, 7]
    assert seen.evaluations == [6, 7] and seen.saved == [7]
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [6, 7]


def test_a_finished_run_takes_no_step(tmp_path, monkeypatch):
    result, seen = train(tmp_path, monkeypatch, start=7)
    assert (result.steps, result.losses, seen.saved) == (7, [], [])


def test_only_rank_0_evaluates_logs_and_saves(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "global_mean", lambda value, world: float(value))  # no group
    result, seen = train(tmp_path, monkeypatch, world=World(1, 2, 1))
    assert result.steps == 7 and len(result.losses) == 7
    assert (seen.evaluations, seen.saved, seen.on_step, seen.boards) == ([], [], [], [])
    assert rundir.read_metrics(tmp_path) == [] and result.scores is None


@pytest.mark.parametrize("start", [0, 3])
def test_a_nan_loss_stops_the_run_with_the_value_the_step_and_the_last_checkpoint(
    tmp_path, monkeypatch, start
):
    """The whole message, word for word: the value, the step, where to resume from (the
    checkpoint a resumed run started from counts)."""
    monkeypatch.setattr(loop, "time", Clock())
    model = torch.nn.Linear(1, 1)
    with pytest.raises(loop.TrainingError) as caught:
        run_loop(
            run_dir=tmp_path,
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            batches=iter(lambda: torch.ones(1, 1), None),
            compute_loss=lambda batch: (model(batch).sum() * float("nan"), {}),
            schedule=Schedule(9, 1, 100, 2, 1),
            start=start,
            world=World(0, 1, 0),
            device="cpu",
            settings={},
        )
    good = (
        f"the last good checkpoint is {tmp_path / rundir.LAST} (step 3)"
        if start
        else "no checkpoint was saved yet"
    )
    assert str(caught.value) == (
        f"the loss is nan at step {start + 1}; training stopped, {good} (check the data and "
        "lower the learning rate)"
    )


class NeedsTwo(SoundnetError):
    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UsageProblem("bad clip"), UsageProblem("bad clip")),  # not from a worker: as it is
        (
            UsageProblem(
                "Caught UsageProblem in DataLoader worker process 0.\nOriginal Traceback "
                "(most recent call last):\n  File x\nsoundnet_cli.errors.UsageProblem: bad clip\n"
            ),
            UsageProblem("bad clip"),
        ),
        (
            NeedsTwo("a", "Original\nOriginal Traceback\nmod.NeedsTwo: clip 3: unreadable\n \n"),
            SoundnetError("clip 3: unreadable"),  # trailing blank lines ignored
        ),
        (  # an error without a message: its last line is all there is
            UsageProblem("Caught UsageProblem\nOriginal Traceback\nsoundnet_cli.UsageProblem"),
            UsageProblem("soundnet_cli.UsageProblem"),
        ),
    ],
)
def test_an_error_from_a_data_loader_worker_is_one_line_of_its_type(error, expected):
    def batches():
        raise error
        yield

    with pytest.raises(SoundnetError) as caught:
        loop._next_batch(batches())
    assert type(caught.value) is type(expected) and str(caught.value) == str(expected)
