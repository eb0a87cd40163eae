from __future__ import annotations

import json
import shlex
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from lightning_cl.training.cli import _default_config_path, main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
README = (ROOT / "README.md").read_text()


def _results_path(out: str) -> Path:
    line = next(line for line in out.splitlines() if line.startswith("results: "))
    return Path(line.removeprefix("results: "))


def test_console_script_is_installed() -> None:
    (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "lightning-cl"]
    assert entry.value == "lightning_cl.training.cli:main"


def test_fit_with_no_arguments_runs_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit"])
    out = capsys.readouterr().out
    assert "Accuracy matrix R[i, j]" in out and "average accuracy" in out
    data = json.loads((tmp_path / _results_path(out)).read_text())
    assert {"accuracy_matrix", "average_accuracy", "forgetting", "bwt"} <= set(data)
    assert len(data["accuracy_matrix"]) == 5
    assert data["average_accuracy"] > 0.7  # the default uses Replay
    assert (tmp_path / _results_path(out)).parent.joinpath("config.yaml").is_file()


def test_overrides_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "split_digits_naive.yaml"
    main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs",
            "1",
            "--benchmark.init_args.n_experiences",
            "2",
        ]
    )
    data = json.loads((tmp_path / _results_path(capsys.readouterr().out)).read_text())
    assert len(data["accuracy_matrix"]) == 2 and len(data["accuracy_matrix"][0]) == 2


def test_unknown_config_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["fit", "--config", str(ROOT / "configs" / "split_digits_naive.yaml"), "--trainer.max_epocs", "1"]
        )
    assert exit_info.value.code != 0
    assert "max_epocs" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_value_in_config_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "configs" / "split_digits_replay.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"]["mem_size"] = -5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="mem_size must be an int >= 0, got -5"):
        main(["fit", "--config", str(path)])
    assert not list(tmp_path.glob("runs/**/metrics.csv"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["benchmark"]["class_path"].startswith("lightning_cl.data.")
    assert printed["model"]["model"]["class_path"] == "lightning_cl.models.MLP"


def test_default_config_is_the_replay_config() -> None:
    default = yaml.safe_load(Path(_default_config_path()).read_text())
    replay = yaml.safe_load((ROOT / "configs" / "split_digits_replay.yaml").read_text())
    for config in (default, replay):
        config["trainer"].pop("default_root_dir")
    assert default == replay


def test_readme_lists_every_config() -> None:
    for config in CONFIGS:
        assert f"configs/{config.name}" in README


def _readme_cli_lines() -> list[str]:
    block = README.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    return [line for line in lines if "split_mnist" not in line and "--help" not in line]


def test_readme_command_lines_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    lines = _readme_cli_lines()
    assert len(lines) >= 3
    for line in lines:
        args = shlex.split(line)
        assert args[0] == "lightning-cl"
        main(args[1:])
        assert _results_path(capsys.readouterr().out).name == "results.json"


def test_resume_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "configs" / "split_digits_replay.yaml")
    main(["fit", "--config", config, "--trainer.max_epochs", "1", "--trainer.default_root_dir", "first"])
    first = _results_path(capsys.readouterr().out)
    ckpt = first.parent / "checkpoints" / "experience_002.ckpt"
    main(
        [
            "fit",
            "--config",
            config,
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            "second",
            "--ckpt_path",
            str(ckpt),
        ]
    )
    second = _results_path(capsys.readouterr().out)
    assert (
        json.loads(second.read_text())["accuracy_matrix"] == json.loads(first.read_text())["accuracy_matrix"]
    )
    assert not (second.parent / "checkpoints" / "experience_002.ckpt").exists()
    assert (second.parent / "checkpoints" / "experience_004.ckpt").exists()
