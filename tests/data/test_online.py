import pytest

from lightning_cl.data import SplitDigits, split_online


def test_online_mini_experiences():
    stream = SplitDigits(n_experiences=5).train_stream
    online = split_online(stream, 100, seed=1)
    sizes = [len(e) for e in online]
    assert sum(sizes) == sum(len(e) for e in stream) and max(sizes) == 100
    assert online.indices == list(range(len(online)))
    first = [e.online for e in online if e.online.origin_experience is stream[0]]
    assert [e.is_first_subexp for e in first] == [True, False, False]
    assert [e.is_last_subexp for e in first] == [False, False, True]
    assert all(e.sub_stream_length == 3 and not e.access_task_boundaries for e in first)
    assert (
        not online[0].access_task_boundaries and stream[0].online is None and stream[0].access_task_boundaries
    )
    covered = sorted(
        i for e in online if e.online.origin_experience is stream[0] for i in e.dataset.indices.tolist()
    )
    assert covered == sorted(stream[0].dataset.indices.tolist())
    x, _y, _t = next(iter(online[0].train_dataloader()))
    assert x.shape[1:] == (1, 8, 8)


def test_boundaries_flag_drop_last_and_errors():
    stream = SplitDigits(n_experiences=5).train_stream
    online = split_online(stream[:1], 100, drop_last=True, access_task_boundaries=True, shuffle=False)
    assert len(online) == 2 and all(e.access_task_boundaries for e in online)
    assert online[0].dataset.indices.tolist() == stream[0].dataset.indices[:100].tolist()
    with pytest.raises(ValueError, match="positive int"):
        split_online(stream, 0)
    with pytest.raises(ValueError, match="leaves no mini-experience"):
        split_online(stream, 10_000, drop_last=True)
