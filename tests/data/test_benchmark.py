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
