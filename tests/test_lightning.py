"""Lightning on a polarized model: the optimizer from configure_optimizers on po.param_groups, attach there, and
a checkpoint resumed by Trainer.fit(ckpt_path=...) continues exactly as the uninterrupted run, in every mode."""

import pytest
import torch
from torch import nn

import polaropt as po

L = pytest.importorskip("lightning", reason="the test extra installs lightning")


class _Net(L.LightningModule):
    """A tied embedding and head around a hidden layer."""

    def __init__(self, mode):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Embedding(32, 16), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 32))
        self.model[3].weight = self.model[0].weight
        po.polarize_model(self.model, mode=mode)
        self.mode = mode

    def training_step(self, batch, index):
        (x,) = batch
        return nn.functional.cross_entropy(self.model(x).flatten(0, 1), ((x + 1) % 32).flatten())

    def configure_optimizers(self):
        opt = torch.optim.AdamW(po.param_groups(self.model, weight_decay=0.1), lr=3e-3)
        if self.mode in ("project", "absorb"):
            po.attach(opt, self.model)
        return opt


def _fit(out, mode, steps, ckpt=None):
    g = torch.Generator().manual_seed(0)
    # one epoch is 10 steps: Lightning resumes a plain DataLoader at an epoch boundary (mid-epoch it restarts the
    # epoch's batches, for a plain model too), so the checkpoint is taken there
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randint(0, 32, (40, 8), generator=g)),
                                       batch_size=4)
    net = _Net(mode)
    every = L.pytorch.callbacks.ModelCheckpoint(dirpath=out, every_n_train_steps=10, save_top_k=-1)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[every])
    trainer.fit(net, data, ckpt_path=ckpt)
    return net


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("mode", po.MODES)
def test_lightning_checkpoints_resume_exactly(mode, tmp_path):
    straight = _fit(tmp_path / "a", mode, 20)
    _fit(tmp_path / "b", mode, 10)
    (ckpt,) = (tmp_path / "b").glob("*.ckpt")
    resumed = _fit(tmp_path / "c", mode, 20, ckpt=str(ckpt))
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.1.parametrizations.weight.original1"],
                           _Net(mode).state_dict()["model.1.parametrizations.weight.original1"])  # it trained
