"""The generated streams train end to end with the module and Replay (indices into one base)."""

import lightning as L
import torch

from lightning_cl import MLP, ContinualModule, Replay
from lightning_cl.data import LoaderSettings, SplitDigits, domain_incremental, split_online
from lightning_cl.data.domain_dataset import DomainDataset
from lightning_cl.data.transforms import PixelPermutation


def fit(module, stream, test_stream, callbacks):
    for exp in stream:
        trainer = L.Trainer(
            max_epochs=1,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=exp)
        trainer.test(module, datamodule=test_stream, verbose=False)


def test_domain_incremental_with_replay_replays_old_domains():
    digits = SplitDigits(n_experiences=1).train_stream[0].dataset.base
    g = torch.Generator().manual_seed(0)
    perms = [PixelPermutation(torch.arange(64)), PixelPermutation(torch.randperm(64, generator=g))]
    bench = domain_incremental(digits, digits, perms, loader=LoaderSettings(batch_size=64))
    replay = Replay(mem_size=50, seed=0)
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0))
    fit(module, bench.train_stream, bench.test_stream, [replay])
    memory = replay.buffer.dataset(bench.train_stream[0].dataset)
    assert memory is not None and isinstance(memory.base, DomainDataset)
    domains = memory.indices // len(digits)
    assert set(domains.tolist()) == {0, 1}
    assert len(module.results.accuracy_matrix) == 2


def test_online_stream_trains():
    bench = SplitDigits(n_experiences=5)
    online = split_online(bench.train_stream[:2], 200)
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0))
    fit(module, online, bench.test_stream[:2], [Replay(mem_size=40, seed=0)])
    assert module.current_experience == len(online) - 1


class _Batches(L.Callback):
    """Records the inputs of every training and test batch as the module receives them."""

    def __init__(self) -> None:
        self.train: list = []
        self.test: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        parts = batch.values() if isinstance(batch, dict) else [batch]
        self.train.append([part[0].clone() for part in parts])

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.test.append(batch[0].clone())


def _augmented_run(augment_on: str, seed: int = 0):
    L.seed_everything(seed, verbose=False)
    bench = SplitDigits(n_experiences=5)
    flip = lambda x: x.flip(-1) + 100.0  # noqa: E731  deterministic, and visible in every batch
    settings = LoaderSettings(augment_on=augment_on)
    stream = [exp.replace(train_transform=flip, loader_settings=settings) for exp in bench.train_stream[:2]]
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0))
    batches = _Batches()
    fit(module, stream, bench.test_stream[:2], [Replay(mem_size=40, seed=0), batches])
    return module, stream, batches


def test_augmentation_on_the_device_matches_the_loader() -> None:
    on_device, stream, batches = _augmented_run("device")
    assert all(exp.augments_on_device() for exp in stream)
    # The loaders hand over raw batches; the module still sees every training part augmented
    # (the current data and, from the second experience on, the replayed data) ...
    x_raw = next(iter(stream[1].train_dataloader()))[0]
    assert float(x_raw.max()) < 50
    assert len(batches.train[-1]) == 2
    assert all(float(x.min()) >= 50 for parts in batches.train for x in parts)
    assert all(float(x.max()) < 50 for x in batches.test)  # ... and no test batch
    # ... and training is the same as augmenting in the loader.
    in_loader, _, _ = _augmented_run("loader")
    for a, b in zip(on_device.state_dict().values(), in_loader.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_auto_augments_in_the_loader_on_cpu() -> None:
    exp = SplitDigits().train_stream[0].replace(train_transform=lambda x: x + 100.0)
    assert exp.loader_settings.augment_on == "auto" and not exp.augments_on_device()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert not exp.augments_on_device(trainer)
    assert float(next(iter(exp.loader(exp.dataset, train=True, trainer=trainer)))[0].min()) >= 50
    assert exp.replace(loader_settings=LoaderSettings(augment_on="device")).augments_on_device(trainer)
