import pytest

from lightning_cl.data import SCENARIOS, Benchmark, SplitDigits


def test_streams_must_align_or_test_be_whole():
    bench = SplitDigits(n_experiences=5)
    with pytest.raises(ValueError, match="differ in length"):
        Benchmark(
            bench.train_stream,
            bench.test_stream[:3],
            n_classes=10,
            class_order=[],
            scenario="class_incremental",
        )
    whole = Benchmark(
        bench.train_stream, bench.test_stream[:1], n_classes=10, class_order=[], scenario="new_instances"
    )
    assert "test: one experience" in repr(whole)
    with pytest.raises(ValueError, match="valid stream"):
        Benchmark(
            bench.train_stream,
            bench.test_stream,
            n_classes=10,
            class_order=[],
            scenario="class_incremental",
            valid_stream=bench.test_stream[:2],
        )


def test_unknown_scenario():
    bench = SplitDigits(n_experiences=5)
    with pytest.raises(ValueError, match="scenario must be one of"):
        Benchmark(bench.train_stream, bench.test_stream, n_classes=10, class_order=[], scenario="magic")
    assert "domain_incremental" in SCENARIOS and "new_instances" in SCENARIOS


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        (
            dict(return_task_id=True),
            "'return_task_id' is Avalanche's name; here it is 'task_labels': pass task_labels=True",
        ),
        (dict(fixed_class_order=[0, 1]), "here it is 'class_order'"),
        (dict(dataset_root="data"), "here it is 'root'"),
        (dict(shuffle=False), "seed=None for the sorted one"),
    ],
)
def test_avalanche_argument_names_are_translated_and_errors_name_the_public_class(idx_root, kwargs, hint):
    from lightning_cl.data import SplitCIFAR100, SplitMNIST

    for cls in (SplitMNIST, SplitCIFAR100):
        with pytest.raises(TypeError) as caught:
            cls(idx_root, **kwargs)
        message = str(caught.value)
        assert message.startswith(f"{cls.__name__}() got unexpected keyword arguments {list(kwargs)}")
        assert hint in message and "Its arguments: root, n_experiences" in message
        assert "_Split" not in message  # no private base class named


def test_unknown_and_positional_arguments_name_the_public_class():
    with pytest.raises(
        TypeError, match=r"^SplitDigits\(\) got unexpected keyword arguments \['foo'\]\. Its arguments"
    ):
        SplitDigits(foo=1)
    with pytest.raises(TypeError, match=r"^SplitDigits\(\): too many positional arguments"):
        SplitDigits(5, 1, None, False, None, 3)


def test_class_incremental_benchmark_splits_any_dataset_by_class():
    import torch

    from lightning_cl.data import ClassIncrementalBenchmark, TensorClassificationDataset

    ds = TensorClassificationDataset(torch.randn(60, 3), torch.arange(60) % 6)
    bench = ClassIncrementalBenchmark(
        ds, ds, n_experiences=3, class_order=[5, 4, 3, 2, 1, 0], task_labels=True
    )
    assert [e.classes_in_this_experience for e in bench.train_stream] == [[4, 5], [2, 3], [0, 1]]
    assert [e.task_labels for e in bench.train_stream] == [[0], [1], [2]]
    assert bench.name == "ClassIncrementalBenchmark" and bench.scenario == "task_incremental"
    with pytest.raises(ValueError, match="either class_order or seed"):
        ClassIncrementalBenchmark(ds, ds, n_experiences=3, class_order=[0, 1, 2, 3, 4, 5], seed=1)


def test_split_benchmarks_forward_the_shared_arguments():
    # SplitDigits lists only its own arguments; the shared ones reach ClassIncrementalBenchmark.
    bench = SplitDigits(n_experiences=2, per_exp_classes=[4, 6], class_ids_from_zero_in_each_exp=True, seed=3)
    assert [len(e.classes_in_this_experience) for e in bench.train_stream] == [4, 6]
    assert bench.train_stream[1].classes_in_this_experience == list(range(6))
    assert bench.name == "SplitDigits"
    with pytest.raises(
        TypeError, match=r"^SplitDigits\(\) got unexpected keyword arguments \['train_dataset'\]"
    ):
        SplitDigits(train_dataset=None)
