import pytest
import torch

from lightning_cl.data import (
    ImageFilesDataset,
    LoaderSettings,
    TensorClassificationDataset,
    dataset_benchmark,
    filelist_benchmark,
    paths_benchmark,
    tensors_benchmark,
)


def part(lo, hi, n=4):
    return TensorClassificationDataset(torch.full((n, 2), float(lo)), torch.arange(n) % (hi - lo) + lo)


def test_dataset_list_one_experience_each():
    bench = dataset_benchmark([part(0, 2), part(2, 4)], [part(0, 2, 2), part(2, 4, 2)], task_labels=True)
    assert bench.scenario == "task_incremental"
    assert [e.classes_in_this_experience for e in bench.train_stream] == [[0, 1], [2, 3]]
    assert [e.task_label for e in bench.train_stream] == [0, 1]
    x, y, t = bench.train_stream[1].dataset.__getitems__([0, 1])
    assert x[:, 0].tolist() == [2.0, 2.0] and y.tolist() == [2, 3] and t.tolist() == [1, 1]
    assert bench.train_stream[0].dataset.base is bench.train_stream[1].dataset.base
    same = dataset_benchmark([part(0, 2), part(0, 2)], [part(0, 2)])
    assert same.scenario == "domain_incremental" and len(same.test_stream) == 1


def test_tensors():
    parts = [(torch.zeros(3, 2), torch.tensor([0, 1, 0])), (torch.ones(2, 2), torch.tensor([2, 3]))]
    bench = tensors_benchmark(parts, parts, loader=LoaderSettings(batch_size=2), transform=lambda x: x + 1)
    assert [len(e) for e in bench.train_stream] == [3, 2] and bench.n_classes == 4
    x, _, _ = next(iter(bench.train_stream[1].train_dataloader()))
    assert (x == 2).all()
    with pytest.raises(ValueError, match="2 inputs but 1 targets"):
        tensors_benchmark(
            [(torch.zeros(2, 1), torch.tensor([0]))], [(torch.zeros(2, 1), torch.tensor([0, 1]))]
        )


def test_mismatched_lists():
    with pytest.raises(ValueError, match="one test dataset per train dataset"):
        dataset_benchmark([part(0, 2)] * 3, [part(0, 2)] * 2)
    with pytest.raises(ValueError, match="at least one"):
        dataset_benchmark([], [])


def write_images(root, n_classes=3, per_class=2):
    from PIL import Image

    pairs = []
    for c in range(n_classes):
        for k in range(per_class):
            path = root / f"class{c}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8 + k, 6), (30 * c, 0, 0)).save(path)
            pairs.append((f"class{c}/{k}.png", c))
    return pairs


def test_paths_filelists_and_folder(tmp_path):
    pairs = write_images(tmp_path)
    bench = paths_benchmark(
        [pairs[:2], pairs[2:]], [pairs], root=tmp_path, size=(6, 8), loader=LoaderSettings()
    )
    assert [e.classes_in_this_experience for e in bench.train_stream] == [[0], [1, 2]]
    x, _y, _ = next(iter(bench.train_stream[1].test_dataloader()))
    assert x.shape == (4, 3, 6, 8) and x.dtype == torch.uint8
    lists = []
    for i, chunk in enumerate((pairs[:3], pairs[3:])):
        f = tmp_path / f"train_{i}.txt"
        f.write_text("\n".join(f"{p} {c}" for p, c in chunk))
        lists.append(f)
    fl = filelist_benchmark(tmp_path, lists, lists[:1], size=(6, 8), loader=LoaderSettings())
    assert [len(e) for e in fl.train_stream] == [3, 3]
    folder = ImageFilesDataset.from_folder(tmp_path, size=(6, 6), mode="L")
    assert folder.classes == ["class0", "class1", "class2"] and folder.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert folder[5][0].shape == (1, 6, 6)
    bad = tmp_path / "bad.txt"
    bad.write_text("just_a_path.png\n")
    with pytest.raises(ValueError, match="expected 'path label'"):
        filelist_benchmark(tmp_path, [bad], [bad])
    with pytest.raises(ValueError, match="holds no images"):
        ImageFilesDataset.from_folder(tmp_path / "nothing")
