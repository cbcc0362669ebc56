"""Multi-process training on the CPU (gloo): sharding across ranks, DDP gradients, no hang at epoch end."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from asr.data.manifest import Utterance, write_manifest
from asr.data.shards import ShardBatches, write_shards
from tests.conftest import write_audio

WORDS = ["ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO"]


def make_shards(root: Path, n: int, per_shard: int) -> list[str]:
    utts = []
    for i in range(n):
        path = root / "audio" / f"u{i:03d}.flac"
        dur = 0.6 + 0.1 * (i % 7)
        write_audio(path, dur, seed=i, fmt="FLAC")
        utts.append(Utterance(f"u{i:03d}", str(path), f"{WORDS[i % 5]} {WORDS[(i * 3) % 5]}", dur, f"s{i % 3}"))
    write_manifest(root / "dev.jsonl", utts[:4])
    return [str(p) for p in write_shards(utts, root / "shards", "train", per_shard, progress=False)]


def test_ranks_read_disjoint_samples_covering_the_epoch(tmp_path):
    shards = make_shards(tmp_path, 30, 4)  # 8 shards, the last one short
    seen = []
    for rank in range(2):
        ds = ShardBatches(shards, max_frames=2000, max_batch=8, seed=3, rank=rank, world=2)
        ds.set_epoch(1)
        seen.append([i for b in ds for i in b["ids"]])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"u{i:03d}" for i in range(30)]


def test_too_few_shards_for_ranks_and_workers_warns(tmp_path, caplog):
    shards = make_shards(tmp_path, 6, 6)  # one shard
    ds = ShardBatches(shards, max_frames=2000, max_batch=8, rank=0, world=2)
    ds.check_split(num_workers=2)
    assert "1 shards for 2 ranks x 2 workers" in caplog.text


def _ddp_worker(rank: int, world: int, port: int, out: str, bf16: bool = False) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from asr.config import ModelConfig
    from asr.model import AcousticModel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = AcousticModel(ModelConfig(subsample_channels=4, hidden=8, layers=1, dropout=0.0), 20, 6)
    net = DistributedDataParallel(model)
    if bf16:  # as asr.train registers it with train.ddp_bf16_grads
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

        net.register_comm_hook(None, bf16_compress_hook)
    feats, lengths, targets = _batches()[rank]
    lp, ol = net(feats, lengths)
    loss = torch.nn.functional.ctc_loss(lp.transpose(0, 1), targets, ol, torch.full((2,), 3), reduction="mean")
    loss.backward()
    if rank == 0:
        torch.save({k: p.grad.clone() for k, p in model.named_parameters()}, out)
    # As asr.train does: the DDP wrapper goes before gloo (else ~5% of ranks abort at exit), and a
    # barrier keeps one rank from tearing gloo down while the other still works.
    del net, lp, loss
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 40, 20, generator=g), torch.tensor([40, 33]), torch.randint(1, 6, (2, 3), generator=g))
            for _ in range(2)]


@pytest.mark.parametrize("bf16", [False, True])
def test_ddp_gradients_equal_single_process_over_the_global_batch(tmp_path, bf16):
    """Two ranks with one batch each average to the gradient one process gets by accumulating both
    (with bf16 all-reduce: to bf16's precision, and not bit for bit, so the hook did act)."""
    from asr.config import ModelConfig
    from asr.model import AcousticModel

    out = str(tmp_path / "grads.pt")
    mp.spawn(_ddp_worker, args=(2, 29500 + os.getpid() % 1000 + 7 * bf16, out, bf16), nprocs=2, join=True)
    ddp = torch.load(out)
    torch.manual_seed(0)
    model = AcousticModel(ModelConfig(subsample_channels=4, hidden=8, layers=1, dropout=0.0), 20, 6)
    for feats, lengths, targets in _batches():
        lp, ol = model(feats, lengths)
        loss = torch.nn.functional.ctc_loss(lp.transpose(0, 1), targets, ol, torch.full((2,), 3), reduction="mean")
        (loss / 2).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(ddp[k], p.grad, rtol=1e-2 if bf16 else 1e-4, atol=1e-4 if bf16 else 1e-6)
    if bf16:
        assert not all(torch.equal(ddp[k], p.grad) for k, p in model.named_parameters())


def test_torchrun_two_processes_train_without_hang(tmp_path):
    """torchrun -m asr train with 2 gloo ranks and unevenly filled shards finishes; rank 0 writes;
    speaker means (features.speaker_cmn) are pooled over the ranks, each of which read half the data."""
    shards = make_shards(tmp_path, 22, 4)  # 6 shards, uneven: ranks see different batch counts
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(31000 + os.getpid() % 1000), "-m", "asr", "train", "--train", *shards, "--dev",
           str(tmp_path / "dev.jsonl"), "--exp", str(exp), "--device", "cpu", "model.hidden=16", "model.layers=1",
           "model.subsample_channels=4", "train.epochs=2", "train.max_frames=600", "train.num_workers=0",
           "train.cmvn_utts=8", "train.warmup_steps=2", "train.log_every=1", "train.threads=1",
           "features.speaker_cmn=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] > 0
    from asr.audio import load_audio
    from asr.config import FeatureConfig
    from asr.features import LogMel

    means = torch.load(exp / "ckpt" / "state.pt", weights_only=False)["cmvn"]["speakers"]
    assert sorted(means) == ["s0", "s1", "s2"]
    mel = LogMel(FeatureConfig())
    s1 = [load_audio(tmp_path / "audio" / f"u{i:03d}.flac") for i in range(1, 22, 3)]
    s1 = torch.cat([mel.raw(w[None], torch.tensor([w.shape[0]]))[0][0] for w in s1])
    torch.testing.assert_close(means["s1"], s1.mean(0), atol=1e-4, rtol=1e-4)
    assert (exp / "model.pt").is_file() and (exp / "ckpt" / "state.pt").is_file()
    epochs = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines() if "train_loss" in line]
    assert [e["epoch"] for e in epochs] == [1, 2]  # one writer (rank 0), one record per epoch


def test_torchrun_two_nodes_with_c10d_rendezvous(tmp_path):
    """The README's several-machines command, as two one-process "nodes" on this host: both finish,
    the ranks come from the rendezvous (not --node_rank), and only global rank 0 prints a summary and
    writes the experiment, though each node has a local rank 0."""
    shards = make_shards(tmp_path, 22, 4)
    exp = tmp_path / "exp"
    port = 34000 + os.getpid() % 1000
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
              "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=t{port}", "-m", "asr", "train",
              "--train", *shards, "--dev", str(tmp_path / "dev.jsonl"), "--exp", str(exp), "--device", "cpu",
              "model.hidden=16", "model.layers=1", "model.subsample_channels=4", "train.epochs=2",
              "train.max_frames=600", "train.num_workers=0", "train.cmvn_utts=8", "train.log_every=1",
              "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, err) in zip(nodes, outs):
        assert node.returncode == 0, err[-3000:]
    printed = [json.loads(line) for out, _ in outs for line in out.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["best_dev_wer"] is not None
    assert "world 2" in outs[0][1] + outs[1][1]
    assert json.loads((exp / "train_summary.json").read_text()) == printed[0]
    epochs = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines() if "train_loss" in line]
    assert [e["epoch"] for e in epochs] == [1, 2]


def test_torchrun_summary_lists_what_every_rank_skipped(tmp_path):
    """Each rank reads its own shards: a broken shard read by rank 1 only is still in rank 0's
    summary, its list on stderr and train_summary.json."""
    good = make_shards(tmp_path, 22, 4)
    junk = tmp_path / "shards" / "junk-000000.tar"
    junk.write_bytes(bytes(range(256)) * 40)
    for at in range(len(good) + 1):  # put it where rank 1 reads it in epoch 1 (seed 1234: the default)
        shards = good[:at] + [str(junk)] + good[at:]
        if str(junk) in ShardBatches(shards, 600, 512, seed=1234, rank=1, world=2).my_shards(0, 1):
            break
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(35000 + os.getpid() % 1000), "-m", "asr", "train", "--train", *shards, "--exp", str(exp),
           "--device", "cpu", "model.hidden=16", "model.layers=1", "train.epochs=1", "train.max_frames=600",
           "train.num_workers=0", "train.cmvn_utts=8", "train.threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((exp / "train_summary.json").read_text())
    assert any("junk-000000.tar" in s for s in summary["skipped"]), summary
    assert "training or dev items skipped:" in proc.stderr


def test_torchrun_time_budget_stops_every_rank_at_the_same_step(tmp_path):
    """train.max_minutes under torchrun: the ranks agree on the clock (max over ranks), so all stop
    after the same step and none is left waiting in an all-reduce; the time-paced LR is the same."""
    shards = make_shards(tmp_path, 40, 4)
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(32000 + os.getpid() % 1000), "-m", "asr", "train", "--train", *shards, "--dev",
           str(tmp_path / "dev.jsonl"), "--exp", str(exp), "--device", "cpu", "model.hidden=16", "model.layers=1",
           "train.epochs=200", "train.max_minutes=0.05", "train.schedule_by_time=true", "train.max_frames=600",
           "train.ddp_bf16_grads=true",
           "train.num_workers=0", "train.cmvn_utts=8", "train.warmup_steps=2", "train.log_every=1", "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reached; stopping after step" in proc.stderr
    summary = json.loads((exp / "train_summary.json").read_text())
    assert 0 < summary["epochs"] < 200
    assert (exp / "model.pt").is_file()


def test_fewer_shards_than_ranks_is_a_clear_error(tmp_path):
    """One shard for two ranks: rank 1 could never train; the run refuses with a one-line reason."""
    shards = make_shards(tmp_path, 6, 6)  # one shard
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(33000 + os.getpid() % 1000), "-m", "asr", "train", "--train", *shards, "--exp", str(exp),
           "--device", "cpu", "model.hidden=16", "model.layers=1", "train.threads=1", "train.num_workers=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "1 training shard(s) for 2 ranks" in proc.stderr
