import argparse
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
            "import argparse\n"
            "from cli import run_cli\n"
            "parser = argparse.ArgumentParser()\n"
            "parser.add_argument('-d', '--debug', action='store_true')\n"
            "def main(args):\n    raise RuntimeError('boom')\n"
            "run_cli(main, parse=parser.parse_args)\n")
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




def test_library_parameter_errors_are_shown_as_flags(capsys):
    from cli import ParameterError

    error = ParameterError("image_dir", "/data/missing", "folder not found")
    assert str(error) == "image_dir='/data/missing': folder not found"

    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exc:
        run_cli(main, [], flags={"image_dir": "data_dir"})
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: --data_dir /data/missing: folder not found\n"


def test_options_are_read_only():
    from cli import Options

    options = Options(lr=1e-4, nEpochs=2)
    with pytest.raises(AttributeError, match="read-only"):
        options.lr = 1.0
    assert options.to_dict() == {"lr": 1e-4, "nEpochs": 2}


def test_loader_workers_are_capped_at_the_cores(monkeypatch, capsys):
    import cli

    monkeypatch.setattr(cli, "available_cores", lambda: 2)
    assert cli.loader_workers(1) == 1 and cli.loader_workers(2) == 2
    assert capsys.readouterr().err == ""
    assert cli.loader_workers(8, "--threads") == 2
    assert capsys.readouterr().err == ("note: using 2 data loader workers (one per CPU core; "
                                       "--threads asks for 8)\n")
    # Left at its default, the flag is not quoted as if the user had asked.
    assert cli.loader_workers(8, "--threads", default=8) == 2
    assert capsys.readouterr().err == ("note: using 2 data loader workers (one per CPU core; "
                                       "--threads defaults to 8)\n")
    monkeypatch.setattr(cli, "available_cores", lambda: 1)
    assert cli.loader_workers(4, "--workers") == 1
    assert capsys.readouterr().err == ("note: using 1 data loader worker (one per CPU core; "
                                       "--workers asks for 4)\n")


def make_script_parser() -> argparse.ArgumentParser:
    import cli

    parser = cli.ArgumentParser(prog="script.py", description="A script.")
    parser.add_argument("--video", nargs="+", help="input videos")
    parser.add_argument("-m", "--model", default="weights/x.pth", help="weights")
    parser.add_argument("--crf", type=int, default=18, help="quality")
    add_bool_flag(parser, "--future_frame", default=True, help="use future frames")
    return parser


@pytest.mark.parametrize("argv, message", [
    (["--vidoe", "x.mp4"], "unrecognized argument --vidoe (did you mean --video?)"),
    (["--video", "x.mp4", "--modle=y.pth"],
     "unrecognized argument --modle (did you mean --model?)"),
    (["--vidoe", "x.mp4", "--crff", "3"],
     "unrecognized arguments --vidoe (did you mean --video?), --crff (did you mean --crf?)"),
    (["--video", "x.mp4", "--zzz"], "unrecognized argument --zzz"),
    (["stray", "words"], "unexpected arguments stray words"),
    (["--crf", "high"], "argument --crf: invalid int value: 'high'"),
])
def test_a_bad_command_line_is_one_line_with_the_closest_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        make_script_parser().parse_args(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"  # no usage before it


def test_the_script_parser_keeps_prefixes_and_the_help(capsys):
    args = make_script_parser().parse_args(["--vid", "x.mp4", "--mod", "y.pth"])
    assert (args.video, args.model) == (["x.mp4"], "y.pth")
    plain = argparse.ArgumentParser(prog="script.py", description="A script.")
    plain.add_argument("--video", nargs="+", help="input videos")
    plain.add_argument("-m", "--model", default="weights/x.pth", help="weights")
    plain.add_argument("--crf", type=int, default=18, help="quality")
    add_bool_flag(plain, "--future_frame", default=True, help="use future frames")
    assert make_script_parser().format_help() == plain.format_help()
    with pytest.raises(SystemExit) as exc:
        make_script_parser().parse_args(["--help"])
    assert exc.value.code == 0 and capsys.readouterr().out == plain.format_help()
