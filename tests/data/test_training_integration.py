"""The generated streams train end to end with the module and Replay (indices into one base)."""

import lightning as L
import torch

from lightning_cl import MLP, ContinualModule, Replay
from lightning_cl.data import SplitDigits, domain_incremental, split_online
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
    bench = domain_incremental(digits, digits, perms, batch_size=64)
    replay = Replay(mem_size=50, seed=0)
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0))
    fit(module, bench.train_stream, bench.test_stream, [replay])
    memory = replay.buffer.dataset()
    assert isinstance(memory.base, DomainDataset)
    domains = memory.indices // len(digits)
    assert set(domains.tolist()) == {0, 1}
    assert len(module.results.accuracy_matrix) == 2


def test_online_stream_trains():
    bench = SplitDigits(n_experiences=5, batch_size=32)
    online = split_online(bench.train_stream[:2], 200)
    module = ContinualModule(MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0))
    fit(module, online, bench.test_stream[:2], [Replay(mem_size=40, seed=0)])
    assert module.current_experience == len(online) - 1
