"""``lightning-cl reproduce``: targets checked, tables written, missed targets fail, absent data skips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_cl.training import reproduce as rep
from lightning_cl.training.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs" / "reproduce").glob("*.yaml"))


def _digits_config(**target: Any) -> dict[str, Any]:
    """A two-experience SplitDigits run of a few batches, with a ``reproduce`` section."""
    section = {"value": 0.5, "tolerance": 0.5, "check": "within", "source": "a test", **target}
    return {
        "seed_everything": 1,
        "model": {
            "model": {
                "class_path": "lightning_cl.models.MLP",
                "init_args": {"num_classes": 10, "input_size": 64, "hidden_size": 32, "drop_rate": 0.0},
            },
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}},
        },
        "benchmark": {
            "class_path": "lightning_cl.data.SplitDigits",
            "init_args": {"n_experiences": 2, "seed": 1, "loader": {"batch_size": 32}},
        },
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "devices": 1,
            "limit_train_batches": 4,
            "limit_test_batches": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "log_every_n_steps": 1,
            "callbacks": [],
        },
        "reproduce": section,
    }


def _write(folder: Path, name: str, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run(argv: list[str]) -> int:
    return rep.main(argv)


def test_reproduce_config_runs_unchanged_with_fit(tmp_path: Path, capsys) -> None:
    config = _write(tmp_path / "configs", "digits", _digits_config())
    cli_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("results: "))
    results = json.loads(Path(line.removeprefix("results: ")).read_text())
    assert len(results["accuracy_matrix"]) == 2


def test_table_json_and_markdown(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "configs"
    _write(folder, "digits", _digits_config())
    out = tmp_path / "out"
    code = _run(["--config-dir", str(folder), "--out", str(out), "--data-root", str(tmp_path), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    data = json.loads((out / "reproduce.json").read_text())
    [row] = data["results"]
    run_results = json.loads(next((out / "digits" / "seed_1").glob("**/results.json")).read_text())
    # The measured value is the run's own final average accuracy, and it meets the target.
    assert row["measured"] == [pytest.approx(run_results["average_accuracy"])]
    assert row["status"] == "passed" and row["within_tolerance"] is True
    assert row["seeds"] == [1] and row["target"]["value"] == 0.5 and row["target"]["source"] == "a test"
    assert len(row["seconds"]) == 1 and row["seconds"][0] > 0
    table_row = next(line for line in printed.splitlines() if line.startswith("digits"))
    assert f"{run_results['average_accuracy']:.3f}" in table_row
    assert "0.500 (± 0.5)" in table_row and "passed" in table_row
    markdown = (out / "reproduce.md").read_text().splitlines()
    assert markdown[0].startswith("| config | target | measured")
    assert markdown[2].startswith("| digits | 0.500 (± 0.5) |") and markdown[2].endswith("| a test |")


def test_missed_target_exits_non_zero(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "configs"
    _write(folder, "impossible", _digits_config(value=1.0, tolerance=0.0, check="at_least"))
    out = tmp_path / "out"
    code = _run(["--config-dir", str(folder), "--out", str(out), "--data-root", str(tmp_path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "missed or failed: impossible" in captured.err
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["status"] == "missed" and row["within_tolerance"] is False
    assert row["measured"][0] < 1.0


def test_console_command_exits_with_the_status(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "configs"
    _write(folder, "impossible", _digits_config(value=1.0, tolerance=0.0))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["reproduce", "--config-dir", str(folder), "--out", str(tmp_path / "out"), "--quiet"])
    assert exit_info.value.code == 1


def test_absent_data_is_skipped_with_the_reason(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "configs"
    _write(folder, "needs_files", _digits_config(data=["cifar-100-python"]))
    # No data list, but the benchmark's own check finds no MNIST files under the root.
    mnist = _digits_config()
    mnist["benchmark"] = {"class_path": "lightning_cl.data.SplitMNIST", "init_args": {"root": "data"}}
    _write(folder, "mnist_absent", mnist)
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    code = _run(["--config-dir", str(folder), "--out", str(out), "--data-root", str(empty), "--quiet"])
    assert code == 0
    rows = {r["name"]: r for r in json.loads((out / "reproduce.json").read_text())["results"]}
    assert rows["needs_files"]["status"] == "skipped"
    assert rows["needs_files"]["reason"] == f"data absent: {empty / 'cifar-100-python'}"
    assert rows["mnist_absent"]["status"] == "skipped"
    assert "data absent" in rows["mnist_absent"]["reason"] and "MNIST" in rows["mnist_absent"]["reason"]
    assert rows["needs_files"]["measured"] == [] and rows["needs_files"]["mean"] is None
    table = capsys.readouterr().out
    assert "skipped: data absent" in table


def test_seeds_and_names_select_the_runs(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "configs"
    _write(folder, "a", _digits_config())
    _write(folder, "b", _digits_config())
    out = tmp_path / "out"
    argv = ["b", "--seeds", "1", "2", "--config-dir", str(folder), "--out", str(out), "--quiet"]
    assert _run(argv) == 0
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["name"] == "b" and row["seeds"] == [1, 2]
    for seed, value in zip(row["seeds"], row["measured"], strict=True):
        run = json.loads(next((out / "b" / f"seed_{seed}").glob("**/results.json")).read_text())
        assert value == pytest.approx(run["average_accuracy"])
    assert row["mean"] == pytest.approx(sum(row["measured"]) / 2)
    assert row["spread"] is not None and row["spread"] >= 0
    with pytest.raises(SystemExit) as exit_info:
        _run(["c", "--config-dir", str(folder), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "unknown config names ['c']; available: ['a', 'b']" in capsys.readouterr().err


def test_quick_runs_only_the_quick_configs_with_their_options_and_target(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    # The quick run's own option (one training batch) and target; the full target is impossible.
    quick = {"args": ["--trainer.limit_train_batches", "1"], "value": 0.5, "tolerance": 0.5}
    _write(folder, "with_quick", _digits_config(value=1.0, tolerance=0.0, quick=quick))
    _write(folder, "without_quick", _digits_config())
    out = tmp_path / "out"
    assert _run(["--quick", "--config-dir", str(folder), "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "reproduce.json").read_text())
    [row] = data["results"]
    assert data["quick"] is True and row["name"] == "with_quick" and row["quick"] is True
    assert row["target"]["value"] == 0.5 and row["status"] == "passed"
    saved = yaml.safe_load(next((out / "with_quick" / "seed_1_quick").glob("**/config.yaml")).read_text())
    assert saved["trainer"]["limit_train_batches"] == 1


def test_list_prints_the_targets(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "configs"
    _write(folder, "digits", _digits_config(value=0.25, tolerance=0.01, check="at_least"))
    assert _run(["--list", "--config-dir", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == "digits: average_accuracy 0.250 (>= 0.240)  [a test]"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"value": 0.5}, "'reproduce.tolerance' is required"),
        ({"value": 0.5, "tolerance": -0.1}, "tolerance must be a number >= 0, got -0.1"),
        ({"value": 0.5, "tolerance": 0.1, "check": "near"}, "check must be one of ('at_least', 'within')"),
        ({"value": float("nan"), "tolerance": 0.1}, "target value must be a finite number"),
        ({"value": 0.5, "tolerance": 0.1, "seed": [1]}, "unknown keys ['seed']"),
        ({"value": 0.5, "tolerance": 0.1, "seeds": []}, "'reproduce.seeds' must be a non-empty list of ints"),
        (
            {"value": 0.5, "tolerance": 0.1, "seeds": [1, -1]},
            "seeds must be integers in [0, 4294967295], got [-1]",
        ),
        ({"value": 0.5, "tolerance": 0.1, "seeds": [2, 2]}, "seeds must differ"),
        ({"value": 0.5, "tolerance": 0.1, "metric": "avg_acc"}, "metric must be one of ('average_accuracy'"),
        ({"value": 0.5, "tolerance": 0.1, "quick": {"arg": []}}, "unknown keys ['arg'] in 'reproduce.quick'"),
        (
            {"value": 0.5, "tolerance": 0.1, "quick": {"args": "--trainer.max_epochs 1"}},
            "'reproduce.quick.args' must be a list of fit options and values",
        ),
        (
            {"value": 0.5, "tolerance": 0.1, "quick": {"tolerance": -1}},
            "'reproduce.quick': tolerance must be a number >= 0, got -1",
        ),
        ({"value": 0.5, "tolerance": 0.1, "quick": True}, "'reproduce.quick' must be a mapping"),
    ],
)
def test_bad_target_sections_are_refused(tmp_path: Path, section: dict[str, Any], message: str) -> None:
    config = _digits_config()
    config["reproduce"] = section
    path = _write(tmp_path, "bad", config)
    with pytest.raises(ValueError, match=r"bad\.yaml") as err:
        rep.ReproduceConfig.from_file(path)
    assert message in str(err.value)


def test_a_config_without_target_is_refused(tmp_path: Path) -> None:
    config = _digits_config()
    del config["reproduce"]
    path = _write(tmp_path, "plain", config)
    with pytest.raises(ValueError, match="needs a top-level 'reproduce:' section"):
        rep.ReproduceConfig.from_file(path)


def test_a_non_mapping_section_and_invalid_yaml_name_the_file(tmp_path: Path) -> None:
    config = _digits_config()
    config["reproduce"] = [1, 2]
    path = _write(tmp_path, "listed", config)
    with pytest.raises(ValueError, match=r"listed\.yaml: 'reproduce' must be a mapping"):
        rep.ReproduceConfig.from_file(path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("reproduce:\n  check: [within\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML \(line \d+, column \d+\)"):
        rep.ReproduceConfig.from_file(broken)


def test_config_folder_errors_are_usage_errors_before_any_run(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "configs"
    _write(folder, "good", _digits_config())
    (folder / "broken.yaml").write_text("reproduce: {value: [\n")
    out = tmp_path / "out"

    def usage_error(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            _run(argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    # A broken file is reported with its name; naming only the good config reads only that one.
    assert "broken.yaml: not valid YAML" in usage_error(["--list", "--config-dir", str(folder)])
    assert _run(["good", "--list", "--config-dir", str(folder)]) == 0
    capsys.readouterr()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a folder" in usage_error(["--list", "--config-dir", str(afile)])
    (tmp_path / "empty").mkdir()
    assert "holds no *.yaml reproduce configs" in usage_error(["--config-dir", str(tmp_path / "empty")])
    # A named config without a quick run under --quick is refused, not dropped.
    err = usage_error(["good", "--quick", "--config-dir", str(folder), "--out", str(out)])
    assert "configs ['good'] have no quick run" in err
    # Bad seeds and an output folder that cannot be made stop before anything runs.
    good = ["good", "--config-dir", str(folder)]
    assert "got [-1]" in usage_error([*good, "--seeds", "-1", "--out", str(out)])
    assert "seeds must differ" in usage_error([*good, "--seeds", "1", "1", "--out", str(out)])
    assert "--out" in usage_error([*good, "--out", str(afile)])
    assert not out.exists()


def test_a_results_file_of_an_earlier_run_does_not_count(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    _write(folder, "digits", _digits_config())
    out = tmp_path / "out"
    base = ["--config-dir", str(folder), "--out", str(out), "--quiet"]
    assert _run(base) == 0
    # The next run writes its results elsewhere: the old results.json in out must not be read.
    moved = ["--fit-args", "--trainer.default_root_dir", str(tmp_path / "elsewhere")]
    assert _run([*base, *moved]) == 1
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["status"] == "failed" and "wrote no results.json" in row["reason"]
    assert json.loads((out / "reproduce.json").read_text())["fit_args"] == moved[1:]


def test_options_fit_refuses_are_reported_with_fits_message(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    _write(folder, "digits", _digits_config())
    out = tmp_path / "out"
    argv = ["--config-dir", str(folder), "--out", str(out), "--quiet", "--fit-args", "--trainer.nosuch", "3"]
    assert _run(argv) == 1
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["status"] == "failed"
    assert "lightning-cl fit refused its options" in row["reason"] and "nosuch" in row["reason"]


def _resumable_config(tmp_path: Path) -> Path:
    """Five SplitDigits experiences, each ending with a stream checkpoint."""
    config = _digits_config()
    config["benchmark"]["init_args"]["n_experiences"] = 5
    config["trainer"]["enable_checkpointing"] = True
    return _write(tmp_path / "configs", "digits", config)


def _resume_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config-dir",
        str(tmp_path / "configs"),
        "--out",
        str(out),
        "--data-root",
        str(tmp_path),
        "--quiet",
        *extra,
    ]


def test_resume_continues_a_cut_run_to_the_same_result(tmp_path: Path, capsys) -> None:
    _resumable_config(tmp_path)
    out = tmp_path / "out"
    assert _run(_resume_args(tmp_path, out)) == 0
    whole = json.loads((out / "reproduce.json").read_text())["results"][0]
    assert whole["resumed_from"] == [None]
    seed_dir = out / "digits" / "seed_1"
    recorded = json.loads((seed_dir / "reproduce_run.json").read_text())
    assert recorded["seed"] == 1 and recorded["fit_args"] == [] and recorded["quick_args"] is None
    assert len(recorded["config_sha256"]) == 64 and "--trainer.default_root_dir" in recorded["args"]
    checkpoints = sorted(seed_dir.glob("**/experience_*.ckpt"))
    assert [c.name for c in checkpoints] == [f"experience_00{i}.ckpt" for i in range(5)]
    # Cut after the third experience: its checkpoint is the newest one left.
    for late in checkpoints[3:]:
        late.unlink()
    capsys.readouterr()
    assert _run(_resume_args(tmp_path, out, "--resume")) == 0
    printed = capsys.readouterr()
    resumed = json.loads((out / "reproduce.json").read_text())
    [row] = resumed["results"]
    assert resumed["resume"] is True
    assert row["resumed_from"] == [str(checkpoints[2])]
    # Only the last two experiences were trained again, and the stream ends where the whole run did.
    assert row["measured"] == whole["measured"]
    again = sorted(p.name for p in (seed_dir / "lightning_logs" / "version_1" / "checkpoints").iterdir())
    assert again == ["experience_003.ckpt", "experience_004.ckpt"]
    assert "(seeds 1 resumed)" in printed.out
    assert "resumed from experience_002.ckpt" in printed.err


def test_resume_without_a_checkpoint_runs_from_the_start(tmp_path: Path) -> None:
    _resumable_config(tmp_path)
    out = tmp_path / "out"
    assert _run(_resume_args(tmp_path, out, "--resume")) == 0
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["resumed_from"] == [None] and row["status"] == "passed"


def test_resume_refuses_the_checkpoint_of_a_run_with_other_options(tmp_path: Path, capsys) -> None:
    _resumable_config(tmp_path)
    out = tmp_path / "out"
    assert _run(_resume_args(tmp_path, out, "--fit-args", "--trainer.limit_train_batches", "2")) == 0
    seed_dir = out / "digits" / "seed_1"
    before = sorted(p.name for p in seed_dir.rglob("*"))
    assert _run(_resume_args(tmp_path, out, "--resume")) == 1
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["status"] == "failed"
    assert "--resume found" in row["reason"] and "other options" in row["reason"]
    assert "fit_args: ['--trainer.limit_train_batches', '2'] then, [] now" in row["reason"], row["reason"]
    assert "run again with the recorded options to resume" in row["reason"]
    # Nothing ran: the folder is as the first run left it.
    assert sorted(p.name for p in seed_dir.rglob("*")) == before
    # --resume chooses the checkpoint itself.
    with pytest.raises(SystemExit) as exit_info:
        _run(_resume_args(tmp_path, out, "--resume", "--fit-args", "--ckpt_path", "last"))
    assert exit_info.value.code == 2
    assert "drop --ckpt_path from --fit-args" in capsys.readouterr().err


def test_resume_ignores_the_checkpoints_of_an_earlier_run_in_the_folder(tmp_path: Path) -> None:
    # A run with other options left checkpoints; a new run then started in the same folder (its
    # record written) and was cut before its first checkpoint: --resume starts it afresh.
    _resumable_config(tmp_path)
    out = tmp_path / "out"
    assert _run(_resume_args(tmp_path, out, "--fit-args", "--trainer.limit_train_batches", "2")) == 0
    record = out / "digits" / "seed_1" / "reproduce_run.json"
    entry = json.loads(record.read_text())
    entry["fit_args"] = []  # the new run's options: no --fit-args
    record.write_text(json.dumps(entry))
    assert _run(_resume_args(tmp_path, out, "--resume")) == 0
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["resumed_from"] == [None] and row["status"] == "passed"
    fresh = tmp_path / "fresh"
    assert _run(_resume_args(tmp_path, fresh)) == 0
    assert row["measured"] == json.loads((fresh / "reproduce.json").read_text())["results"][0]["measured"]


def _cut_run(tmp_path: Path, out: Path, keep: int = 3) -> Path:
    """A whole run of seed 1 in ``out``, then its checkpoints after the first ``keep`` removed."""
    assert _run(_resume_args(tmp_path, out)) == 0
    seed_dir = out / "digits" / "seed_1"
    for late in sorted(seed_dir.glob("**/experience_*.ckpt"))[keep:]:
        late.unlink()
    return seed_dir


def test_resume_checks_the_config_contents_not_the_spelling_of_paths(tmp_path: Path, monkeypatch) -> None:
    path = _resumable_config(tmp_path)
    out = tmp_path / "out"
    _cut_run(tmp_path, out)
    whole = json.loads((out / "reproduce.json").read_text())["results"][0]["measured"]
    # The same folders, spelt relative to another working directory: resumed.
    monkeypatch.chdir(tmp_path)
    relative = ["--config-dir", "configs", "--out", "out", "--data-root", ".", "--quiet", "--resume"]
    assert _run(relative) == 0
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["resumed_from"][0].endswith("experience_002.ckpt") and row["measured"] == whole
    # An edited config (another learning rate) is not resumed from the old one's checkpoints.
    _cut_run(tmp_path, tmp_path / "edited")
    text = path.read_text()
    path.write_text(text.replace("lr: 0.05", "lr: 0.5"))
    assert path.read_text() != text
    assert _run(_resume_args(tmp_path, tmp_path / "edited", "--resume")) == 1
    [row] = json.loads((tmp_path / "edited" / "reproduce.json").read_text())["results"]
    assert row["status"] == "failed" and "config_sha256" in row["reason"]
    assert "the config file was edited since" in row["reason"]


def test_resume_without_a_readable_record_is_refused_with_its_path(tmp_path: Path) -> None:
    _resumable_config(tmp_path)
    out = tmp_path / "out"
    seed_dir = _cut_run(tmp_path, out)
    record = seed_dir / "reproduce_run.json"
    record.write_text("{not json")
    assert _run(_resume_args(tmp_path, out, "--resume")) == 1
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert f"the record of their run's options, {record}, cannot be read" in row["reason"]
    record.unlink()
    assert _run(_resume_args(tmp_path, out, "--resume")) == 1
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert f"{record}, is missing" in row["reason"] and "--fit-args --ckpt_path PATH" in row["reason"]


def test_resume_skips_a_truncated_checkpoint_for_the_one_before(tmp_path: Path) -> None:
    _resumable_config(tmp_path)
    out = tmp_path / "out"
    seed_dir = _cut_run(tmp_path, out)
    whole = json.loads((out / "reproduce.json").read_text())["results"][0]["measured"]
    newest = sorted(seed_dir.glob("**/experience_*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[:2000])  # cut off while being written
    with pytest.warns(UserWarning, match=f"skipping unreadable checkpoint {newest}"):
        assert _run(_resume_args(tmp_path, out, "--resume")) == 0
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["resumed_from"][0].endswith("experience_001.ckpt") and row["measured"] == whole


def test_quick_runs_keep_a_folder_of_their_own(tmp_path: Path) -> None:
    # A --quick run beside a cut full run leaves the full run resumable.
    config = _digits_config(quick={"args": ["--trainer.limit_train_batches", "2"]})
    config["benchmark"]["init_args"]["n_experiences"] = 5
    config["trainer"]["enable_checkpointing"] = True
    _write(tmp_path / "configs", "digits", config)
    out = tmp_path / "out"
    _cut_run(tmp_path, out)
    assert _run(_resume_args(tmp_path, out, "--quick")) == 0
    assert (out / "digits" / "seed_1_quick" / "reproduce_run.json").is_file()
    assert _run(_resume_args(tmp_path, out, "--resume")) == 0
    [row] = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["resumed_from"][0].endswith("experience_002.ckpt")


def test_check_seeds() -> None:
    assert rep.check_seeds([0, 1, 2**32 - 1]) == [0, 1, 2**32 - 1]
    with pytest.raises(ValueError, match=r"got \[4294967296\]"):
        rep.check_seeds([2**32])
    with pytest.raises(ValueError, match="seeds must differ"):
        rep.check_seeds([3, 1, 3])


def test_target_checks() -> None:
    at_least, within = rep.Target(0.9, 0.03), rep.Target(0.2, 0.03, check="within")
    assert at_least.passes(0.87) and at_least.passes(0.99) and not at_least.passes(0.869)
    assert within.passes(0.17) and within.passes(0.23) and not within.passes(0.24)
    assert not within.passes(float("nan"))


def test_help_lists_the_subcommand(capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "reproduce" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["reproduce", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--quick" in printed and "--data-root" in printed and "--seeds" in printed


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_declare_their_target_and_parse_for_fit(path: Path, capsys) -> None:
    config = rep.ReproduceConfig.from_file(path)
    assert config.target.source and config.data and config.has_root
    assert 0.0 < config.target.value < 1.0 and config.target.tolerance == 0.03
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["reproduce"]["value"] == config.target.value


def test_every_mnist_target_of_the_issue_has_a_config() -> None:
    names = {p.stem for p in SHIPPED}
    assert {
        "split_mnist_naive",
        "split_mnist_lwf",
        "split_mnist_si_task_incremental",
        "split_mnist_rwalk_task_incremental",
        "permuted_mnist_ewc",
        "permuted_mnist_si",
        "permuted_mnist_lfl",
        "permuted_mnist_gem",
        "permuted_mnist_agem",
        "split_mnist_online_replay",
        "split_mnist_gdumb",
        "split_mnist_generative_replay",
        "split_mnist_cope",
        "split_mnist_mir",
        "split_mnist_gss",
        "permuted_mnist_mir",
    } <= names


def test_the_root_of_a_wrapped_benchmark_is_set(tmp_path: Path) -> None:
    config = _digits_config()
    config["benchmark"] = {
        "class_path": "lightning_cl.data.SubsampledBenchmark",
        "init_args": {
            "samples_per_experience": 100,
            "seed": 1,
            "benchmark": {"class_path": "lightning_cl.data.SplitMNIST", "init_args": {"root": "data"}},
        },
    }
    wrapped = rep.ReproduceConfig.from_file(_write(tmp_path, "wrapped", config))
    assert wrapped.has_root and wrapped.has_seed
    assert wrapped.root_option == "--benchmark.init_args.benchmark.init_args.root"
    plain = rep.ReproduceConfig.from_file(SHIPPED[0])
    assert plain.root_option == "--benchmark.init_args.root"


@pytest.mark.slow
def test_quick_targets_are_met_on_real_mnist(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = _run(["--quick", "--data-root", str(data_root), "--out", str(out), "--quiet"])
    data = json.loads((out / "reproduce.json").read_text())
    assert len(data["results"]) >= 2
    assert all(r["status"] == "passed" for r in data["results"]), data["results"]
    assert code == 0
