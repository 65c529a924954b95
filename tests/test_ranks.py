"""ranks.py: one process, and how work is dealt to the processes of a torchrun job (the
collectives themselves run under torchrun in tests/test_test_script.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli
from ranks import Ranks, cpu_threads
from tests.conftest import ROOT


def test_alone_everything_is_this_process():
    ranks = Ranks.start(gpu_mode=False)
    assert (ranks.rank, ranks.world, ranks.first) == (0, 1, True)
    assert ranks.device == torch.device("cpu")
    assert ranks.share([3, 4, 5]) == [3, 4, 5] and ranks.block(7) == range(7)
    assert ranks.from_first(lambda: "plan") == "plan"
    assert ranks.gather({"rows": 1}) == [{"rows": 1}]
    polled = []
    ranks.wait(poll=lambda: polled.append(1))  # nobody to wait for
    assert polled == []
    ranks.close()


def test_work_is_dealt_round_robin_or_in_blocks():
    world = [Ranks(rank, 3) for rank in range(3)]
    assert [r.share(list(range(8))) for r in world] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    blocks = [r.block(8) for r in world]
    assert blocks == [range(0, 2), range(2, 5), range(5, 8)]
    assert [r.block(2) for r in world] == [range(0, 0), range(0, 1), range(1, 2)]
    assert [r.first for r in world] == [True, False, False]


def test_torchrun_processes_on_the_cpu_share_the_cores_unless_the_user_chose():
    # torchrun set OMP_NUM_THREADS=1 itself (its own environment did not have it).
    assert cpu_threads(16, 4, {"OMP_NUM_THREADS": "1"}, {}) == 4
    assert cpu_threads(16, 3, {"OMP_NUM_THREADS": "1"}, None) == 5  # unknown: torchrun's
    assert cpu_threads(2, 4, {"OMP_NUM_THREADS": "1"}, {}) == 1
    assert cpu_threads(16, 4, {}, {}) == 4
    # The user's own choice, as 1 or anything else, is kept.
    assert cpu_threads(16, 4, {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1"}) is None
    assert cpu_threads(16, 4, {"OMP_NUM_THREADS": "3"}, {}) is None
    assert cpu_threads(16, 1, {}, {}) is None  # alone: torch's own choice


def test_the_launcher_environment_is_the_one_the_parent_started_with(monkeypatch):
    """As torchrun does: a variable the parent sets for its children after it started is in
    the children's environment, not in what they see as the launcher's."""
    monkeypatch.setenv("ISB_SET_BY_THE_LAUNCHER", "1")
    child = subprocess.run(
        [sys.executable, "-c", "import json, os, ranks\n"
         "print(json.dumps([os.environ.get('ISB_SET_BY_THE_LAUNCHER'), "
         "ranks.launcher_environ()]))"],
        capture_output=True, text=True, cwd=ROOT, check=True)
    own, launcher = json.loads(child.stdout)
    assert own == "1" and "ISB_SET_BY_THE_LAUNCHER" not in launcher
    assert launcher == launcher_environ_of_this_process()


def launcher_environ_of_this_process() -> dict[str, str]:
    """This process's starting environment, as its children read it."""
    raw = Path("/proc/self/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def test_alone_errors_are_raised_as_they_are():
    ranks = Ranks()

    def fail() -> None:
        raise cli.CLIError("model file not found: x.pth")

    with pytest.raises(cli.CLIError, match="model file not found") as err:
        ranks.from_first(fail)
    assert type(err.value) is cli.CLIError  # not Reported: this process prints it
    with pytest.raises(cli.CLIError, match="model file not found"):
        ranks.first_then_others(fail)
    assert ranks.first_then_others(lambda: 7) == 7


def test_waiting_polls_once_more_when_everyone_has_arrived(monkeypatch):
    """The last rank finishes its work, then arrives: rank 0's poll must see that work (its
    progress bar stopped at 7/12 when the barrier completed between two polls)."""
    import ranks as ranks_module

    arrivals = iter([False, False, True])  # complete at the third look

    class Barrier:
        def is_completed(self) -> bool:
            return next(arrivals)

        def wait(self) -> None:
            pass

    monkeypatch.setattr(ranks_module.dist, "barrier", lambda async_op: Barrier())
    seen = []
    Ranks(0, 2).wait(poll=lambda: seen.append(len(seen)), interval=0)
    assert seen == [0, 1, 2]  # two while waiting, one after everyone arrived
    arrivals = iter([True])  # all had arrived already: the one poll is the final one
    seen.clear()
    Ranks(0, 2).wait(poll=lambda: seen.append(len(seen)), interval=0)
    assert seen == [0]
    arrivals = iter([True])
    Ranks(1, 2).wait(interval=0)  # no poll: nothing to call
