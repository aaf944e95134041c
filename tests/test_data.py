"""Datasets and loaders: CIFAR-10 on disk, offline images, reproducible batches, text corpora."""

import hashlib
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
import torchvision.transforms.functional as TF
from torchvision.datasets import CIFAR10, FakeData

import data
import data.ptb
from data.loaders import crop_and_flip

PAPER_MEAN, PAPER_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def normalised(images_uint8, mean, std):
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return (images_uint8.float() / 255 - mean) / std


def collect(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# -------------------------------------------------------------------- CIFAR-10

N_PER_BATCH = 10  # 5 training files -> 50 images: 40 train, 10 valid; 10 test images


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """A 60-image CIFAR-10 in torchvision's on-disk layout, with torchvision's
    MD5 table pointed at these files (the real loader's check stays in force)."""
    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(60) % 10
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        part = slice(k * N_PER_BATCH, (k + 1) * N_PER_BATCH)
        entry = {"data": images[part].reshape(N_PER_BATCH, -1), "labels": labels[part].tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))

    def md5(name):
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5(name)] for name in names[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
    return tmp_path, torch.from_numpy(images), torch.from_numpy(labels)


def test_cifar10_constants_are_the_papers():
    assert data.CIFAR10_MEAN == PAPER_MEAN and data.CIFAR10_STD == PAPER_STD


def test_cifar10_split_and_normalisation(tiny_cifar):
    root, images, labels = tiny_cifar
    train, valid, test, n_classes = data.get_image_loaders(
        "cifar10", root, 8, data_augm=False, device="cpu", seed=0, download=False
    )
    assert n_classes == 10 and (len(train), len(valid), len(test)) == (5, 2, 2)
    # Valid = the end of the training set, test = the test file, both in order.
    for loader, index in ((valid, slice(40, 50)), (test, slice(50, 60))):
        x, y = collect(loader)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        torch.testing.assert_close(x, normalised(images[index], PAPER_MEAN, PAPER_STD))
        assert torch.equal(y, labels[index])
    # Train = the first 40 images, shuffled.
    x, y = collect(train)
    order = data.epoch_permutation(40, 0, 0)
    torch.testing.assert_close(x, normalised(images[:40][order], PAPER_MEAN, PAPER_STD))
    assert torch.equal(y, labels[:40][order])


def test_cifar10_augments_train_only(tiny_cifar):
    root, images, _ = tiny_cifar
    train, valid, test, _ = data.get_image_loaders(
        "cifar10", root, 8, data_augm=True, device="cpu", seed=0, download=False
    )
    for loader, index in ((valid, slice(40, 50)), (test, slice(50, 60))):
        torch.testing.assert_close(collect(loader)[0], normalised(images[index], PAPER_MEAN, PAPER_STD))
    x, _ = collect(train)
    plain = normalised(images[:40][data.epoch_permutation(40, 0, 0)], PAPER_MEAN, PAPER_STD)
    changed = [not torch.equal(a, b) for a, b in zip(x, plain)]
    assert sum(changed) > 30  # identity crop without flip has probability 1/162


def test_cifar10_limit(tiny_cifar):
    root, _, _ = tiny_cifar
    loaders = data.get_image_loaders("cifar10", root, 4, data_augm=False, device="cpu", seed=0, download=False, limit=6)
    assert [len(collect(loader)[1]) for loader in loaders[:3]] == [6, 6, 6]


def test_cifar10_missing_without_download(tmp_path):
    with pytest.raises(data.DataError) as info:
        data.get_image_loaders("cifar10", tmp_path, 8, data_augm=False, device="cpu", seed=0, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "test_batch" in message and CIFAR10.url in message


def test_cifar10_missing_and_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(data.DataError, match="download failed.*no network") as info:
        data.get_image_loaders("cifar10", tmp_path, 8, data_augm=False, device="cpu", seed=0, download=True)
    assert CIFAR10.url in str(info.value) and "data_batch_1" in str(info.value)


def test_cifar10_corrupted_file(tiny_cifar):
    root, _, _ = tiny_cifar
    path = root / CIFAR10.base_folder / "data_batch_3"
    content = bytearray(path.read_bytes())
    content[100] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match="corrupted.*data_batch_3") as info:
        data.get_image_loaders("cifar10", root, 8, data_augm=False, device="cpu", seed=0, download=False)
    assert "data_batch_1" not in str(info.value)


# ------------------------------------------------------------ offline images


def test_digits_splits_and_normalisation():
    train, valid, test, n_classes = data.get_image_loaders("digits", None, 100, data_augm=False, device="cpu", seed=0)
    assert n_classes == 10 and (len(train), len(valid), len(test)) == (12, 3, 3)
    x, y = collect(train)
    assert x.shape == (1197, 3, 32, 32) and set(y.tolist()) == set(range(10))
    # Normalised with the train split's own statistics.
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3
    sizes = [len(collect(loader)[1]) for loader in (valid, test)]
    assert sizes == [300, 300]


def test_digits_split_is_fixed_and_disjoint():
    first, second = data.load_image_splits("digits", None), data.load_image_splits("digits", None)
    assert torch.equal(first.test.images, second.test.images)
    flat = [s.images.flatten(1) for s in (first.train, first.valid, first.test)]
    assert sum(len(f) for f in flat) == 1797
    assert first.hflip is False


def test_fake_is_torchvision_fakedata():
    splits = data.load_image_splits("fake", None, limit=20)
    reference = FakeData(size=20, image_size=(3, 32, 32), num_classes=10)
    for i in range(20):
        image, label = reference[i]
        assert torch.equal(splits.train.images[i], torch.from_numpy(np.array(image)).permute(2, 0, 1))
        assert splits.train.labels[i] == label
    assert not torch.equal(splits.train.images[:5], splits.valid.images[:5])


def test_fake_keeps_the_global_random_state():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    train, _, _, _ = data.get_image_loaders("fake", None, 16, data_augm=True, device="cpu", seed=0, limit=40)
    collect(train)
    assert torch.equal(torch.rand(3), expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'svhn'.*cifar10, digits, fake"):
        data.get_image_loaders("svhn", None, 8, data_augm=False, device="cpu", seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        data.get_image_loaders("fake", None, 0, data_augm=False, device="cpu", seed=0, limit=4)
    with pytest.raises(ValueError, match="limit"):
        data.get_image_loaders("fake", None, 8, data_augm=False, device="cpu", seed=0, limit=0)


# -------------------------------------------------------------------- loaders


@pytest.fixture(scope="module")
def fake_splits():
    return data.load_image_splits("fake", None, limit=100)


def both_loaders(splits, **kwargs):
    common = dict(mean=splits.mean, std=splits.std, seed=7, **kwargs)
    images, labels = splits.train.images, splits.train.labels
    return (
        data.HostLoader(images, labels, 32, **common),
        data.DeviceLoader(images, labels, 32, device="cpu", **common),
    )


def test_device_and_host_loaders_give_the_same_batches(fake_splits):
    host, device = both_loaders(fake_splits, shuffle=True)
    assert len(host) == len(device) == 4
    for epoch in (0, 3):
        host.set_epoch(epoch)
        device.set_epoch(epoch)
        batches = list(zip(host, device))
        assert [len(y) for (_, y), _ in batches] == [32, 32, 32, 4]  # last partial batch kept
        for (xh, yh), (xd, yd) in batches:
            assert torch.equal(xh, xd) and torch.equal(yh, yd)


@pytest.mark.parametrize("which", [0, 1])
def test_set_epoch_makes_epochs_reproducible(fake_splits, which):
    loader = both_loaders(fake_splits, shuffle=True, augment=True)[which]
    epoch0, epoch1 = collect(loader), collect(loader)  # iterating advances the epoch
    assert not torch.equal(epoch0[1], epoch1[1])
    fresh = both_loaders(fake_splits, shuffle=True, augment=True)[which]
    fresh.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(collect(fresh), epoch1))
    loader.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(collect(loader), epoch0))
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)


def test_crop_and_flip_equals_torchvision():
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=generator)
    offsets = torch.tensor([[0, 0], [8, 8], [0, 8], [3, 5], [4, 4], [7, 1]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = crop_and_flip(batch, offsets, flips, padding=4)
    for image, (top, left), flip, result in zip(batch, offsets.tolist(), flips, out):
        expected = TF.crop(TF.pad(image, [4]), top, left, 32, 32)
        assert torch.equal(result, TF.hflip(expected) if flip else expected)


def _augmentation_draws(loader):
    """(row offset, column offset, flip) of every image, read back from images whose
    channel 0 holds the row number + 1 and channel 1 the column number + 1."""
    draws, pads = [], []
    for x, _ in loader:
        v = torch.round(x * 255).long()
        rows, cols = v[:, 0, :, 16], v[:, 1, 16, :]  # a column and a row through the middle
        flip = cols[:, 16] < cols[:, 15]
        dy = rows[:, 16] - 13  # output row 16 = padded row dy + 16
        dx = torch.where(flip, cols[:, 16] - 12, cols[:, 16] - 13)
        draws.append(torch.stack([dy, dx, flip.long()], 1))
        pads.append(((rows == 0).sum(1) == (dy - 4).abs()) & ((cols == 0).sum(1) == (dx - 4).abs()))
    return torch.cat(draws), torch.cat(pads)


@pytest.mark.parametrize("hflip", [True, False])
def test_device_augmentation_has_torchvision_distribution(hflip):
    """Both loaders' crops are uniform over the 9 x 9 offsets, flips fair (or absent),
    with zero padding; compared by a chi-square test on 2,592 images each."""
    from scipy.stats import binomtest, chisquare

    grid = torch.arange(1, 33, dtype=torch.uint8)
    image = torch.stack(
        [grid[:, None].expand(32, 32), grid[None, :].expand(32, 32), torch.zeros(32, 32, dtype=torch.uint8)]
    )
    n = 2592
    images, labels = image.expand(n, 3, 32, 32).contiguous(), torch.zeros(n, dtype=torch.int64)
    counts = []
    for cls, extra in ((data.HostLoader, {}), (data.DeviceLoader, {"device": "cpu"})):
        loader = cls(images, labels, 512, mean=(0, 0, 0), std=(1, 1, 1), augment=True, hflip=hflip, seed=0, **extra)
        draws, padding_ok = _augmentation_draws(loader)
        assert padding_ok.all()
        assert draws[:, :2].min() >= 0 and draws[:, :2].max() <= 8
        cells = (draws[:, 0] * 9 + draws[:, 1]) * 2 + draws[:, 2]
        count = torch.bincount(cells, minlength=162).double()
        if hflip:
            assert binomtest(int(draws[:, 2].sum()), n).pvalue > 1e-3
        else:
            assert count[1::2].sum() == 0
            count = count[0::2]
        assert chisquare(count.numpy()).pvalue > 1e-3
        for axis in (0, 1):
            assert chisquare(torch.bincount(draws[:, axis], minlength=9).numpy()).pvalue > 1e-3
        counts.append(count)
    # The two empirical distributions agree with each other too.
    from scipy.stats import chi2_contingency

    assert chi2_contingency(torch.stack(counts).numpy()).pvalue > 1e-3


# ------------------------------------------------------------------------ text

TINY = {"train": "the cat sat\n a dog  ran\n", "valid": "the dog sat\n", "test": "a bird\n"}


def write_corpus(folder, names="{}.txt", texts=TINY):
    for split, text in texts.items():
        (folder / names.format(split)).write_text(text)


def test_word_level_corpus(tmp_path):
    write_corpus(tmp_path)
    corpus = data.get_corpus("ptb", tmp_path, char_level=False, download=False)
    words = corpus.dictionary.idx2word
    # One dictionary over the three splits, in order of first appearance.
    assert words == ["the", "cat", "sat", "<eos>", "a", "dog", "ran", "bird"]
    assert len(corpus.dictionary) == 8
    assert [words[i] for i in corpus.train] == ["the", "cat", "sat", "<eos>", "a", "dog", "ran", "<eos>"]
    assert [words[i] for i in corpus.test] == ["a", "bird", "<eos>"]
    assert corpus.train.dtype == torch.int64 and corpus.valid.shape == (4,)


def test_char_level_corpus(tmp_path):
    write_corpus(tmp_path)
    corpus = data.get_corpus("ptb", tmp_path, char_level=True, download=False)
    chars = corpus.dictionary.idx2word
    assert " " in chars and "<eos>" in chars and "\n" not in chars and "b" in chars
    assert len(set(chars)) == len(chars) == len(set("".join(TINY.values())) - {"\n"}) + 1
    text = "".join(chars[i] for i in corpus.train)
    assert text == "the cat sat<eos> a dog  ran<eos>"


def test_batchify_and_get_batch():
    source = data.batchify(torch.arange(23), 4)
    assert source.shape == (5, 4)
    assert source[:, 1].tolist() == [5, 6, 7, 8, 9]  # each column is a contiguous stream
    x, target = data.get_batch(source, 0, 3)
    assert x.shape == (3, 4) and target.shape == (12,)
    assert torch.equal(target.view(3, 4), source[1:4])  # the next token of each input token
    assert torch.equal(target.view(3, 4)[:-1], x[1:])
    x, target = data.get_batch(source, 3, 3)  # the last chunk is shorter
    assert x.shape == (1, 4) and torch.equal(target, source[4])
    with pytest.raises(ValueError, match="i must be"):
        data.get_batch(source, 4, 3)
    with pytest.raises(ValueError, match="too few"):
        data.batchify(torch.arange(5), 4)


def test_git_blob_id():
    assert data.ptb.git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert data.ptb.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


@pytest.fixture
def tiny_checksums(monkeypatch):
    """Point the PTB checksum table at the tiny corpus."""
    table = {split: {"git_blob_sha1": data.ptb.git_blob_sha1(text.encode())} for split, text in TINY.items()}
    monkeypatch.setattr(data.ptb, "PTB_CHECKSUMS", table)


def test_standard_names_are_accepted_and_checked(tmp_path, tiny_checksums):
    write_corpus(tmp_path, "ptb.{}.txt")
    corpus = data.get_corpus("ptb", tmp_path, char_level=False, download=False)
    assert len(corpus.dictionary) == 8
    (tmp_path / "ptb.valid.txt").write_text("the dog sat.\n")
    with pytest.raises(data.DataError, match=r"ptb\.valid\.txt is corrupted") as info:
        data.get_corpus("ptb", tmp_path, char_level=False, download=False)
    assert data.ptb.PTB_URL in str(info.value)


def test_missing_ptb_without_download(tmp_path):
    (tmp_path / "train.txt").write_text(TINY["train"])
    with pytest.raises(data.DataError) as info:
        data.get_corpus("ptb", tmp_path, char_level=False, download=False)
    message = str(info.value)
    assert str(tmp_path) in message and "ptb.valid.txt" in message and "test.txt" in message
    assert "lacks valid.txt or ptb.valid.txt; test.txt or ptb.test.txt" in message


def test_missing_ptb_offline(tmp_path, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.ptb, "fetch", offline)
    with pytest.raises(data.DataError, match="download from .*ptb.train.txt failed.*no network") as info:
        data.get_corpus("ptb", tmp_path, char_level=True)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_is_checked_and_atomic(tmp_path, monkeypatch, tiny_checksums):
    served = dict(TINY, test="tampered\n")
    monkeypatch.setattr(data.ptb, "fetch", lambda url: served[url.rsplit(".", 2)[-2]].encode())
    with pytest.raises(data.DataError, match="not the standard PTB test split"):
        data.get_corpus("ptb", tmp_path, char_level=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ptb.train.txt", "ptb.valid.txt"]
    served["test"] = TINY["test"]
    corpus = data.get_corpus("ptb", tmp_path, char_level=False)
    assert len(corpus.dictionary) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]


def test_unreadable_corpus_files(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "valid.txt").write_bytes(b"\xff\xfe caf\xe9\n")
    with pytest.raises(data.DataError, match=r"valid\.txt is not UTF-8"):
        data.get_corpus("ptb", tmp_path, char_level=False, download=False)
    (tmp_path / "valid.txt").write_text("  \n")
    with pytest.raises(data.DataError, match=r"valid\.txt is empty"):
        data.get_corpus("ptb", tmp_path, char_level=False, download=False)


def test_pydoc_corpus():
    words = data.get_corpus("pydoc", None, char_level=False)
    sizes = [len(words.train), len(words.valid), len(words.test)]
    assert sizes[0] > 50000 and all(0.05 < s / sum(sizes) < 0.15 for s in sizes[1:])
    assert "<eos>" in words.dictionary.word2idx and "class" in words.dictionary.word2idx
    chars = data.get_corpus("pydoc", None, char_level=True)
    assert " " in chars.dictionary.word2idx and "\n" not in chars.dictionary.word2idx
    assert len(chars.train) > 5 * len(words.train)


def test_unknown_corpus():
    with pytest.raises(ValueError, match="'wikitext'.*ptb, pydoc"):
        data.get_corpus("wikitext", None, char_level=False)
