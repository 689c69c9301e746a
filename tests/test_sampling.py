from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from attfc_lite.sampling import KViewDataset, identity_index, sample_keys, sample_keys_tensor

# Identities 0 (4 images), 2 (1 image), 3 (3 images), 5 (2 images); 1 and 4 absent.
LABELS = torch.tensor([3, 0, 0, 2, 5, 3, 0, 3, 5, 0])


def _naive_members(labels: torch.Tensor, c: int) -> list[int]:
    return [i for i in range(len(labels)) if int(labels[i]) == c]


def test_identity_index_matches_naive():
    order, starts, counts = identity_index(LABELS)
    assert counts.tolist() == [4, 0, 1, 3, 0, 2]
    assert len(starts) == 6
    for c in range(6):
        s, n = int(starts[c]), int(counts[c])
        assert order[s : s + n].tolist() == _naive_members(LABELS, c)
    assert sorted(order.tolist()) == list(range(len(LABELS)))


def test_every_key_has_the_query_label():
    g = torch.Generator().manual_seed(1)
    queries = torch.arange(len(LABELS)).repeat(3)
    keys = sample_keys(LABELS, queries, k=5, generator=g)
    assert keys.shape == (len(queries), 5) and keys.dtype == torch.long
    for b in range(len(queries)):
        for j in range(5):
            assert int(LABELS[keys[b, j]]) == int(LABELS[queries[b]])


def test_single_image_identity_gives_k_copies():
    keys = sample_keys(LABELS, torch.tensor([3, 3]), k=4, generator=torch.Generator().manual_seed(0))
    assert keys.tolist() == [[3, 3, 3, 3], [3, 3, 3, 3]]


def test_uniform_over_identity_images_including_query():
    g = torch.Generator().manual_seed(123)
    members = _naive_members(LABELS, 0)  # [1, 2, 6, 9]
    keys = sample_keys(LABELS, torch.full((400,), 2), k=50, generator=g).flatten()
    counts = torch.tensor([(keys == m).sum().item() for m in members], dtype=torch.float64)
    assert counts.sum() == keys.numel()  # nothing outside the identity
    expected = keys.numel() / len(members)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 21.1  # 99.99 % quantile of chi-square with 3 degrees of freedom
    assert counts[members.index(2)] > 0  # the query itself is a possible key


def test_determinism_with_seeded_generator():
    q = torch.arange(len(LABELS))
    a = sample_keys(LABELS, q, 3, generator=torch.Generator().manual_seed(7))
    b = sample_keys(LABELS, q, 3, generator=torch.Generator().manual_seed(7))
    c = sample_keys(LABELS, q, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # A precomputed index gives the same draws as building it inside.
    d = sample_keys(LABELS, q, 3, generator=torch.Generator().manual_seed(7), index=identity_index(LABELS))
    assert torch.equal(a, d)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match=r"^k must be a whole number >= 1"):
        sample_keys(LABELS, torch.tensor([0]), k)


@pytest.mark.parametrize("q", [[10], [-1], [0, 99]])
def test_bad_query_indices(q):
    with pytest.raises(ValueError, match="query_indices"):
        sample_keys(LABELS, torch.tensor(q), 2)


def test_bad_labels_and_float_indices():
    with pytest.raises(TypeError, match="query_indices"):
        sample_keys(LABELS, torch.tensor([0.0]), 2)
    with pytest.raises(TypeError, match="labels"):
        identity_index(LABELS.float())
    with pytest.raises(ValueError, match="labels"):
        identity_index(torch.tensor([0, -1]))


def test_sample_keys_tensor_gathers_the_right_images():
    n = len(LABELS)
    images = torch.zeros(n, 3, 2, 2)
    images[:, 0] = torch.arange(n, dtype=torch.float32)[:, None, None]  # channel 0 = index
    images[:, 1] = LABELS.float()[:, None, None]  # channel 1 = label
    q = torch.tensor([0, 3, 4, 9])
    out = sample_keys_tensor(images, LABELS, q, 6, generator=torch.Generator().manual_seed(5))
    assert out.shape == (4, 6, 3, 2, 2)
    for b in range(4):
        for j in range(6):
            assert float(out[b, j, 1, 0, 0]) == float(LABELS[q[b]])
    keys = sample_keys(LABELS, q, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out[:, :, 0, 1, 1].long(), keys)
    with pytest.raises(ValueError, match="images"):
        sample_keys_tensor(images[:5], LABELS, q, 2)
    with pytest.raises(ValueError, match="images"):
        sample_keys_tensor(images[0], LABELS, q, 2)


class TinyFaces(Dataset):
    """Image i is filled with i / 100; its quality is i / 1000."""

    def __init__(self, labels: torch.Tensor, size: int = 4) -> None:
        self.labels = labels
        self.size = size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.full((3, self.size, self.size), i / 100), int(self.labels[i]), i / 1000


def _decode_index(image: torch.Tensor) -> int:
    return round(float(image[0, 0, 0]) * 100)


def test_kview_dataset_items():
    ds = KViewDataset(TinyFaces(LABELS), k=3, seed=0)
    assert len(ds) == len(LABELS)
    for i in range(len(ds)):
        query, label, keys, quality, key_q = ds[i]
        assert query.shape == (3, 4, 4) and keys.shape == (3, 3, 4, 4) and key_q.shape == (3,)
        assert _decode_index(query) == i and label == int(LABELS[i])
        assert quality == pytest.approx(i / 1000)
        for j in range(3):
            idx = _decode_index(keys[j])
            assert int(LABELS[idx]) == label
            assert float(key_q[j]) == pytest.approx(idx / 1000)
    # The lone image of identity 2 is its own key, k times.
    _, _, keys, _, _ = ds[3]
    assert [_decode_index(x) for x in keys] == [3, 3, 3]


def test_kview_determinism_and_set_epoch():
    a = KViewDataset(TinyFaces(LABELS), k=4, seed=0)
    b = KViewDataset(TinyFaces(LABELS), k=4, seed=0)
    draws = lambda ds: [[_decode_index(x) for x in ds[i][2]] for i in range(len(ds))]  # noqa: E731
    first = draws(a)
    assert first == draws(b)
    assert first == draws(a)  # same (seed, epoch, i): same keys on every call
    a.set_epoch(1)
    second = draws(a)
    assert second != first
    b.set_epoch(1)
    assert second == draws(b)
    a.set_epoch(0)
    assert draws(a) == first
    c = KViewDataset(TinyFaces(LABELS), k=4, seed=1)
    assert draws(c) != first
    with pytest.raises(ValueError, match="epoch"):
        a.set_epoch(-1)


def test_kview_collates_in_a_dataloader():
    ds = KViewDataset(TinyFaces(LABELS), k=2)
    query, label, keys, quality, key_q = next(iter(DataLoader(ds, batch_size=5)))
    assert query.shape == (5, 3, 4, 4) and keys.shape == (5, 2, 3, 4, 4)
    assert label.tolist() == LABELS[:5].tolist()
    assert quality.shape == (5,) and key_q.shape == (5, 2)


def test_kview_bad_arguments():
    with pytest.raises(ValueError, match=r"^k must be a whole number >= 1"):
        KViewDataset(TinyFaces(LABELS), k=0)

    class NoLabels(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(3, 2, 2), 0, 0.0

    with pytest.raises(TypeError, match="labels"):
        KViewDataset(NoLabels())
    with pytest.raises(IndexError, match="index"):
        KViewDataset(TinyFaces(LABELS))[len(LABELS)]


def test_kview_rejects_a_base_that_substitutes_items():
    class Substituting(TinyFaces):
        def __getitem__(self, i):  # returns the next item, as a skipping loader might
            return super().__getitem__((i + 1) % len(self.labels))

    with pytest.raises(ValueError, match="label"):
        KViewDataset(Substituting(LABELS))[0]


# --------------------------------------------------------------------------- keys other than the query


def test_exclude_query_never_gives_the_query_when_the_identity_has_others():
    g = torch.Generator().manual_seed(3)
    queries = torch.arange(len(LABELS)).repeat(50)
    keys = sample_keys(LABELS, queries, k=6, generator=g, exclude_query=True)
    for b, q in enumerate(queries.tolist()):
        members = _naive_members(LABELS, int(LABELS[q]))
        for key in keys[b].tolist():
            assert int(LABELS[key]) == int(LABELS[q])  # still the query's identity
            assert key != q or len(members) == 1  # the query only where it is the identity's one image


def test_exclude_query_is_uniform_over_the_other_images():
    g = torch.Generator().manual_seed(11)
    others = [m for m in _naive_members(LABELS, 0) if m != 6]  # identity 0 is [1, 2, 6, 9]; query 6
    keys = sample_keys(LABELS, torch.full((400,), 6), k=50, generator=g, exclude_query=True).flatten()
    counts = torch.tensor([(keys == m).sum().item() for m in others], dtype=torch.float64)
    assert counts.sum() == keys.numel()  # nothing else: neither the query nor another identity
    expected = keys.numel() / len(others)
    assert float(((counts - expected) ** 2 / expected).sum()) < 18.4  # 99.99 % quantile, 2 degrees of freedom


def test_exclude_query_with_two_images_gives_the_other_one_and_one_image_gives_itself():
    keys = sample_keys(LABELS, torch.tensor([4, 8, 3]), k=3, generator=torch.Generator().manual_seed(0),
                       exclude_query=True)
    assert keys.tolist() == [[8, 8, 8], [4, 4, 4], [3, 3, 3]]  # identity 5 is {4, 8}; identity 2 is {3}


def test_the_default_draws_are_unchanged_by_the_option():
    # the same generator state: drawn with the query by default, as before the option existed
    q = torch.arange(len(LABELS))
    a = sample_keys(LABELS, q, 4, generator=torch.Generator().manual_seed(5))
    b = sample_keys(LABELS, q, 4, generator=torch.Generator().manual_seed(5), exclude_query=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("n, k", [(1, 2), (2, 2), (3, 2), (4, 4), (16, 4)])
def test_self_key_share_matches_its_formula_and_a_simulation(n, k):
    from attfc_lite.sampling import self_key_share

    by_hand = {(1, 2): 1.0, (2, 2): 0.75, (3, 2): 5 / 9, (4, 4): 1 - (3 / 4) ** 4, (16, 4): 1 - (15 / 16) ** 4}
    assert self_key_share(n, k) == pytest.approx(by_hand[(n, k)])
    labels = torch.arange(2000).repeat_interleave(n)
    queries = torch.arange(len(labels))
    keys = sample_keys(labels, queries, k, generator=torch.Generator().manual_seed(0))
    simulated = (keys == queries[:, None]).any(1).double().mean().item()
    assert simulated == pytest.approx(by_hand[(n, k)], abs=0.03)


def test_kview_dataset_excludes_the_query_when_asked():
    class Base(Dataset):
        labels = LABELS

        def __len__(self):
            return len(LABELS)

        def __getitem__(self, i):
            return torch.full((3, 2, 2), float(i)), int(LABELS[i]), 0.5

    ds = KViewDataset(Base(), k=3, seed=0, exclude_query=True)
    for i in range(len(LABELS)):
        if len(_naive_members(LABELS, int(LABELS[i]))) > 1:
            assert i not in ds.key_indices(i).tolist()
    with pytest.raises(ValueError, match="exclude_query"):
        KViewDataset(Base(), k=3, exclude_query="yes")
