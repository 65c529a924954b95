import argparse
import os
import platform
import subprocess
import sys

import pytest

from cli import CLIError, add_bool_flag, parse_size, run_cli, str2bool
from tests.conftest import ROOT


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_bool_flag(parser, "--future_frame", default=True, help="use future frames")
    add_bool_flag(parser, "-r", "--residual", default=False, help="residual learning")
    return parser


@pytest.mark.parametrize("argv, future, residual", [
    ([], True, False),
    (["--future_frame", "False"], False, False),
    (["--future_frame", "0"], False, False),
    (["--no-future_frame"], False, False),
    (["--future_frame"], True, False),
    (["-r"], True, True),
    (["--residual", "yes"], True, True),
    (["--no-residual", "--future_frame", "off"], False, False),
])
def test_bool_flags_can_be_switched_both_ways(argv, future, residual):
    args = make_parser().parse_args(argv)
    assert args.future_frame is future
    assert args.residual is residual


def test_bool_flag_rejects_garbage(capsys):
    with pytest.raises(SystemExit) as exc:
        make_parser().parse_args(["--future_frame", "maybe"])
    assert exc.value.code == 2
    assert "--future_frame" in capsys.readouterr().err


def test_str2bool_values():
    assert str2bool("TRUE") is True and str2bool("n") is False
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("2")


def test_parse_size():
    assert parse_size("180x144") == (180, 144)
    assert parse_size(" 64X32 ") == (64, 32)
    for bad in ("180", "180x", "x144", "-1x4", "1.5x2", "180 x 144"):
        with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
            parse_size(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1x1"):
        parse_size("0x4")
    assert parse_size("2x2", minimum=2) == (2, 2)
    with pytest.raises(argparse.ArgumentTypeError, match="at least 2x2"):
        parse_size("1x8", minimum=2)


def test_run_cli_turns_errors_into_one_line(capsys):
    def main(argv):
        raise CLIError("--model weights/missing.pth: no such file")

    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --model weights/missing.pth: no such file"


def test_run_cli_unexpected_error_is_one_line_without_debug(capsys):
    def main(argv):
        raise RuntimeError("boom")

    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: boom" in err[0]


def test_run_cli_exit_code_passes_through():
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda argv: 3, [])
    assert exc.value.code == 3


def test_run_cli_debug_shows_traceback():
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from cli import run_cli\n"
            "def main(argv):\n    raise RuntimeError('boom')\n"
            "run_cli(main)\n")
    proc = subprocess.run([sys.executable, "-c", code, "--debug"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: boom" in proc.stderr


def test_error_raised_in_a_dataloader_worker_stays_one_line(capsys):
    import torch.utils.data

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise CLIError(f"frame 00{i}.png: cannot identify image file")

    def main(argv):
        for _ in torch.utils.data.DataLoader(Broken(), num_workers=1):
            pass

    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: frame 000.png: cannot identify image file\n"


RSS_AFTER_FREE = """
import sys
import torch
import cli
if sys.argv[1] == "retain":
    print(cli.retain_freed_memory())
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
for _ in range(3):  # a layer's activation: allocated, written, freed
    big = torch.ones(64, 2**20)
    del big
print(round(rss_mib()))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_retain_freed_memory_keeps_freed_tensors_for_reuse():
    def run(mode: str, **env: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], cwd=ROOT,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    default = run("default")
    retained = run("retain")
    assert retained[0] == "True"
    # The 256 MiB tensor goes back to the kernel by default and stays mapped when retained.
    assert int(retained[1]) - int(default[0]) > 200
    # A user's own malloc settings win.
    assert run("retain", MALLOC_TRIM_THRESHOLD_="0")[0] == "False"
