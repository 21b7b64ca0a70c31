"""DDP smoke run of SegAN's alternating update: 2 processes, gloo, tiny tensors.

Two alternating iterations run with the critic and a tiny segmentor both wrapped in DDP, each rank
on half of the batch. Every loss is a mean over equal local batches, so DDP's gradient averaging
must reproduce one process on the whole batch: the final weights must match that reference, and a
second iteration must run (DDP raises if the first left parameters unreduced).
"""

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ddp_harness import run_ranks

from nnunet_mcc.losses.segan import adversarial_l1
from nnunet_mcc.losses.targets import TargetFormat
from nnunet_mcc.networks import SegANCritic
from nnunet_mcc.trainers.segan import critic_update

pytestmark = pytest.mark.e2e  # spawns gloo processes

WORLD = 2
ITERATIONS = 2


def _models():
    torch.manual_seed(0)
    segmentor = nn.Conv2d(2, 3, 3, padding=1)
    critic = SegANCritic(2, 3, dim=2, features_per_stage=[4, 8], strides=[2, 2], spectral_norm=True)
    return segmentor, critic


def _batch():
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(4, 2, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (4, 1, 8, 8), generator=generator).float()
    return image, labels


def _train(segmentor, critic, critic_module, image, labels):
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2, betas=(0.5, 0.999))
    segmentor_optimizer = torch.optim.SGD(segmentor.parameters(), lr=0.1)
    onehot, _ = TargetFormat(3).onehot(labels)
    for _ in range(ITERATIONS):
        segmentor_optimizer.zero_grad(set_to_none=True)
        logits = segmentor(image)
        probabilities = torch.softmax(logits, 1)
        critic_update(critic, critic_optimizer, image, probabilities.detach(), onehot)
        total = nn.functional.cross_entropy(logits, labels[:, 0].long()) + \
            adversarial_l1(critic_module, image, probabilities, onehot)
        total.backward()
        segmentor_optimizer.step()
    segmentor = getattr(segmentor, "module", segmentor)
    return {**{f"segmentor.{k}": v.detach().clone() for k, v in segmentor.state_dict().items()},
            **{f"critic.{k}": v.detach().clone() for k, v in critic_module.state_dict().items()}}


def _worker(rank: int, world: int):
    segmentor, critic = _models()
    image, labels = _batch()
    half = slice(rank * 2, rank * 2 + 2)
    return _train(DDP(segmentor), DDP(critic), critic, image[half], labels[half])


def test_ddp_alternating_update_matches_one_process_on_the_whole_batch(tmp_path):
    states = run_ranks(_worker, WORLD, tmp_path)

    segmentor, critic = _models()
    image, labels = _batch()
    reference = _train(segmentor, critic, critic, image, labels)
    initial_segmentor, initial_critic = _models()
    initial = {**{f"segmentor.{k}": v for k, v in initial_segmentor.state_dict().items()},
               **{f"critic.{k}": v for k, v in initial_critic.state_dict().items()}}

    assert states[0].keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(states[0][key], states[1][key], msg=f"ranks differ in {key}")
        torch.testing.assert_close(states[0][key], value, rtol=1e-4, atol=1e-5, msg=f"{key} differs from one process")
        assert not torch.equal(value, initial[key]), f"{key} did not train"
