"""The benchmark presets pass simulations.compare the preset's options, with the user's in place of them."""

from simulations import benchmark


def _captured(monkeypatch, argv):
    seen = []
    monkeypatch.setattr(benchmark, "compare", lambda args: seen.append(args) or 0)
    assert benchmark.main(argv) == 0
    return seen[0]


def test_user_data_replace_the_presets(monkeypatch, tmp_path):
    mine = str(tmp_path / "mine.csv")  # need not exist: compare (replaced here) reads it
    args = _captured(monkeypatch, ["beijing", "--data", mine, "--out", str(tmp_path / "out")])
    assert args.count("--data") == 1 and args[args.index("--data") + 1] == mine
    assert args[args.index("--history") + 1] == "720" and args.count("--out") == 1


def test_preset_data_must_exist(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(benchmark.PRESETS, "nn5", ["--data", str(tmp_path / "absent.csv.gz"), "--history", "120"])
    assert benchmark.main(["nn5"]) == 1
    assert "absent.csv.gz not found" in capsys.readouterr().err


def test_unknown_preset_prints_usage(capsys):
    assert benchmark.main(["weather"]) == 2
    assert "python -m simulations.benchmark beijing" in capsys.readouterr().err
