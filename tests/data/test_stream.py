import pytest

from lightning_cl.data import LoaderSettings, SplitDigits, Stream


def test_slicing_keeps_indices_and_test_loaders():
    stream = SplitDigits(n_experiences=5, loader=LoaderSettings(batch_size=64)).test_stream
    part = stream[1:4:2]
    assert isinstance(part, Stream) and part.indices == [1, 3] and part.name == "test"
    loaders = part.test_dataloader()
    assert len(loaders) == 2
    labels = [set(b[1].tolist()) for b in loaders[1]]
    assert set().union(*labels) == {6, 7}
    assert len(part.val_dataloader()) == 2 and len(part.predict_dataloader()) == 2
    assert stream.n_classes == 10
    assert "indices=[0, 1, 2, 3, 4]" in repr(stream)


def test_concatenation():
    stream = SplitDigits(n_experiences=5).train_stream
    assert (stream[3:] + stream[:2]).indices == [3, 4, 0, 1]
    assert Stream.concat([stream[:1], stream[4:]]).indices == [0, 4]
    test = SplitDigits(n_experiences=5).test_stream
    assert (stream[:1] + test[:1]).name == "train+test"


def test_errors():
    with pytest.raises(ValueError, match="at least one experience"):
        Stream("train", [])
    with pytest.raises(IndexError, match="no index 5"):
        SplitDigits(n_experiences=5).train_stream[5]
    with pytest.raises(ValueError, match="at least one stream"):
        Stream.concat([])
