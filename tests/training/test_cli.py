from __future__ import annotations

import json
import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

from lightning_cl.training.cli import DEBUG_ENV, _default_config_path, main
from lightning_cl.training.fit_stream import FIGURE_FILE

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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "configs" / "split_digits_replay.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"]["mem_size"] = -5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code == 1
    assert "lightning-cl: error: ValueError: mem_size must be an int >= 0, got -5" in capsys.readouterr().err
    assert not list(tmp_path.glob("runs/**/metrics.csv"))


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        (None, ["--benchmark.init_args.n_experiences", "3"], "n_experiences=3 cannot split 10 classes"),
        (None, ["--trainer.callbacks.mem_size", "-1"], "mem_size must be an int >= 0, got -1"),
        ("split_mnist_naive.yaml", ["--benchmark.init_args.root", "{tmp}/no_such_dir"], "download=True"),
        (None, ["--model.model.init_args.input_size", "784"], "input_size=64"),
    ],
    ids=["n_experiences", "mem_size", "missing_mnist_root", "model_does_not_fit_the_data"],
)
def test_errors_show_the_library_message_in_a_line_or_two(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    config: str | None,
    override: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    args = ["fit", *(["--config", str(ROOT / "configs" / config)] if config else [])]
    args += [a.format(tmp=tmp_path) for a in override]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("Seed set to")]
    assert err[0].startswith("lightning-cl: error: ") and message in err[0]
    assert len(err) <= 3 and "Union subtypes" not in "\n".join(err)
    assert not list(tmp_path.glob("runs/**/results.json")) and not list(tmp_path.glob("runs/**/*.ckpt"))


def test_debug_variable_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="mem_size must be an int >= 0, got -1"):
        main(["fit", "--trainer.callbacks.mem_size", "-1"])


def test_bare_command_prints_usage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lightning-cl") and "fit" in out
    assert "Train the model on every experience of the benchmark" in out
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_fit_help_describes_lightning_cl(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Train the model on every experience of the benchmark" in out
    assert "Runs the full optimization routine" not in out
    assert "--benchmark" in out and "--data" not in out and "--weights_only" not in out
    assert "'last' for the newest experience_<i>.ckpt" in " ".join(out.split())


def test_abbreviated_options_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.max_epoch", "2"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --trainer.max_epoch 2" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_print_config_prints_the_default_experiment(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    default = yaml.safe_load(Path(_default_config_path()).read_text())
    assert (
        printed["benchmark"]["class_path"]
        == default["benchmark"]["class_path"]
        == "lightning_cl.data.SplitDigits"
    )
    assert printed["model"]["model"]["init_args"]["input_size"] == 64
    assert printed["trainer"]["max_epochs"] == default["trainer"]["max_epochs"]
    assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == ["lightning_cl.methods.Replay"]


QUICK = ["--trainer.limit_train_batches", "2", "--trainer.limit_test_batches", "1"]


def test_options_apply_to_the_default_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--trainer.max_epochs", "2", "--trainer.devices", "1", *QUICK])
    out = capsys.readouterr().out
    results = tmp_path / _results_path(out)
    assert results.parent.parent.parent == tmp_path / "runs" / "default"  # the default's root dir
    assert len(json.loads(results.read_text())["accuracy_matrix"]) == 5
    saved = yaml.safe_load(results.with_name("config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and str(saved["trainer"]["devices"]) == "1"
    assert saved["trainer"]["callbacks"][0]["init_args"]["mem_size"] == 200  # Replay, from the default
    figure = results.with_name(FIGURE_FILE)
    assert figure.read_bytes()[:4] == b"\x89PNG" and f"figure: {figure.relative_to(tmp_path)}" in out


def test_one_callback_class_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # LightningCLI hands over one object, not a list, for `--trainer.callbacks <class>`.
    monkeypatch.chdir(tmp_path)
    main(["fit", "--trainer.callbacks", "lightning_cl.methods.EWC", "--trainer.max_epochs", "1", *QUICK])
    results = tmp_path / _results_path(capsys.readouterr().out)
    saved = yaml.safe_load(results.with_name("config.yaml").read_text())
    assert saved["trainer"]["callbacks"]["class_path"] == "lightning_cl.methods.EWC"
    checkpoint = results.parent / "checkpoints" / "experience_004.ckpt"
    states = torch.load(checkpoint, weights_only=True)["callbacks"]
    assert [k.split("{")[0] for k in states] == ["EWC"]


def _run_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / name / "lightning_logs"


def test_ckpt_path_last_resumes_from_the_newest_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--trainer.max_epochs", "1", "--trainer.default_root_dir", "run", *QUICK]
    main(base)
    first = json.loads((tmp_path / _results_path(capsys.readouterr().out)).read_text())
    checkpoints = _run_dir(tmp_path, "run") / "version_0" / "checkpoints"
    for i in (3, 4):  # as if the run had stopped after experience 2
        (checkpoints / f"experience_00{i}.ckpt").unlink()
    main([*base, "--ckpt_path", "last"])
    resumed = tmp_path / _results_path(capsys.readouterr().out)
    assert resumed.parent.name == "version_1"
    assert sorted(p.name for p in (resumed.parent / "checkpoints").iterdir()) == [
        "experience_003.ckpt",
        "experience_004.ckpt",
    ]
    assert json.loads(resumed.read_text())["accuracy_matrix"] == first["accuracy_matrix"]


def test_ckpt_path_last_without_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.default_root_dir", "empty", "--ckpt_path", "last"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "FileNotFoundError: ckpt_path='last': no stream checkpoint" in err and "empty" in err


def test_resume_with_other_methods_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--trainer.max_epochs", "1", *QUICK]
    main([*base, "--trainer.default_root_dir", "replay", "--benchmark.init_args.n_experiences", "2"])
    capsys.readouterr()
    ckpt = _run_dir(tmp_path, "replay") / "version_0" / "checkpoints" / "experience_000.ckpt"
    naive = [*base, "--trainer.callbacks", "[]", "--benchmark.init_args.n_experiences", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main([*naive, "--trainer.default_root_dir", "naive", "--ckpt_path", str(ckpt)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "written with the CL callbacks [\"Replay{'mem_size': 200" in err
    assert "the callbacks given are []" in err
    assert "strict_callbacks=False" in err
    main(
        [
            *naive,
            "--trainer.default_root_dir",
            "naive",
            "--ckpt_path",
            str(ckpt),
            "--strict_callbacks",
            "false",
        ]
    )
    results = json.loads((tmp_path / _results_path(capsys.readouterr().out)).read_text())
    assert len(results["accuracy_matrix"]) == 2


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["benchmark"]["class_path"].startswith("lightning_cl.data.")
    assert printed["model"]["model"]["class_path"].startswith("lightning_cl.models.")


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


def test_set_up_facts_in_the_readme_and_the_extras() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: {re.split(r"[<>=\[]", d, maxsplit=1)[0] for d in v} for k, v in extras.items()}
    assert {"nbclient", "nbformat", "ipykernel", "nbconvert", "matplotlib"} <= names["test"]
    assert {"tensorboard", "mlflow"} <= names["loggers"]
    assert 'pytest -m "not slow and not distributed"' in README
    assert 'pip install -e ".[loggers]"' in README and "notebooks/01_quickstart.ipynb" in README
    assert (ROOT / "notebooks" / "01_quickstart.ipynb").is_file()
    markers = (ROOT / "setup.cfg").read_text()
    assert "slow:" in markers and "distributed:" in markers


def test_print_config_lists_the_arguments_a_benchmark_forwards(capsys) -> None:
    # SplitMNIST's signature forwards seed, class_order, ... as **kwargs: LightningCLI follows them.
    with pytest.raises(SystemExit):
        main(["fit", "--benchmark", "lightning_cl.data.SplitMNIST", "--print_config"])
    args = yaml.safe_load(capsys.readouterr().out)["benchmark"]["init_args"]
    assert {"root", "download", "loader", "seed", "class_order", "task_labels", "per_exp_classes"} <= set(
        args
    )
    assert "train_dataset" not in args
