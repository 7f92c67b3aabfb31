"""Loaders: embedded digits, spirals, CIFAR-10 batches and IDX files, good and bad."""

import gzip
import math
import pickle

import numpy as np
import pytest

from proxnp.training.data import (
    DataError,
    RestrictedUnpickler,
    load_dataset,
    read_idx,
    restricted_load,
)


def write_cifar(folder, n_per_batch=20, seed=0, protocol=2):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"batch_label": b"x",
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
            b"filenames": [b"f"] * n_per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
    return folder


def write_idx(folder, n=60, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def put(name, magic, arr):
        raw = (
            magic.to_bytes(4, "big")
            + b"".join(d.to_bytes(4, "big") for d in arr.shape)
            + arr.astype(np.uint8).tobytes()
        )
        path = folder / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)

    put("train-images-idx3-ubyte", 2051, rng.integers(0, 256, (n, 28, 28)))
    put("train-labels-idx1-ubyte", 2049, rng.integers(0, 10, n))
    put("t10k-images-idx3-ubyte", 2051, rng.integers(0, 256, (n_test, 28, 28)))
    put("t10k-labels-idx1-ubyte", 2049, rng.integers(0, 10, n_test))
    return folder


def test_digits_split_and_scaling():
    d = load_dataset("digits", seed=3)
    assert (
        d.x_train.shape == (1197, 64) and d.x_val.shape == (300, 64) and d.x_test.shape == (300, 64)
    )
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert 0 <= d.x_train.min() and d.x_train.max() == 1.0
    img = load_dataset("digits", seed=3, flat=False)
    assert img.input_shape == (1, 8, 8)
    assert np.array_equal(img.x_train.reshape(1197, -1), d.x_train)
    assert not np.array_equal(load_dataset("digits", seed=4).y_train, d.y_train)
    assert np.array_equal(load_dataset("digits", seed=3).y_train, d.y_train)


def test_spirals():
    d = load_dataset("spirals", dtype=np.float64)
    assert d.x_train.shape == (1000, 2) and d.n_classes == 3 and d.x_train.dtype == np.float64


def test_cifar_layout_and_paper_split(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    d = load_dataset("cifar10", data_dir=tmp_path, flat=False)
    assert d.x_train.shape == (90, 3, 32, 32) and d.x_val.shape == (10, 3, 32, 32)
    assert d.x_test.shape == (20, 3, 32, 32) and d.x_train.max() <= 1.0
    raw = pickle.loads(
        (tmp_path / "cifar-10-batches-py" / "data_batch_5").read_bytes(), encoding="bytes"
    )
    # validation = the last training images (the tail of data_batch_5), pixels / 255
    assert np.allclose(d.x_val.reshape(10, -1), raw[b"data"][-10:] / 255.0, atol=1e-6)
    assert np.array_equal(d.y_val, raw[b"labels"][-10:])


def test_cifar_missing_truncated_and_malformed(tmp_path):
    folder = write_cifar(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: file not found"):
        load_dataset("cifar10", data_dir=folder)
    write_cifar(folder)
    raw = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_2: not a valid CIFAR-10 python batch"):
        load_dataset("cifar10", data_dir=folder)
    write_cifar(folder)
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((3, 5), np.uint8), b"labels": [0, 1, 2]}, protocol=2)
    )
    with pytest.raises(
        DataError, match=r"test_batch: b'data' must be a uint8 array of shape \(n, 3072\)"
    ):
        load_dataset("cifar10", data_dir=folder)
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 12]}, protocol=2)
    )
    with pytest.raises(DataError, match="integers in 0..9"):
        load_dataset("cifar10", data_dir=folder)
    with pytest.raises(DataError, match="pass --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="no such directory"):
        load_dataset("cifar10", data_dir=tmp_path / "nope")


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_hostile_pickle_is_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_cifar(tmp_path / "c")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Boom()}, protocol=2))
    with pytest.raises(DataError, match="refusing global (posix|os|nt).system"):
        load_dataset("cifar10", data_dir=folder)
    assert not (tmp_path / "PWNED").exists()
    # the naive way would have executed it -- proving the file really is hostile
    pickle.loads((folder / "data_batch_1").read_bytes())
    assert (tmp_path / "PWNED").exists()


def test_restricted_unpickler_admits_only_what_cifar_needs(tmp_path):
    path = tmp_path / "ok"
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path.write_bytes(pickle.dumps({b"a": arr}, protocol=2))
    assert np.array_equal(restricted_load(path)[b"a"], arr)
    assert ("builtins", "eval") not in RestrictedUnpickler.ALLOWED


@pytest.mark.parametrize("gz", [True, False])
def test_idx_mnist(tmp_path, gz):
    write_idx(tmp_path / "mnist", gz=gz)
    d = load_dataset("mnist", data_dir=tmp_path, flat=False)
    assert d.x_train.shape == (54, 1, 28, 28) and d.x_val.shape == (6, 1, 28, 28)
    assert d.x_test.shape == (20, 1, 28, 28)
    write_idx(tmp_path / "fashion-mnist", gz=gz, seed=1)
    f = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert f.x_train.shape == (54, 784) and not np.array_equal(f.x_train, d.x_train.reshape(54, -1))


def test_idx_bad_magic_and_size(tmp_path):
    folder = write_idx(tmp_path, gz=False)
    p = folder / "train-labels-idx1-ubyte"
    raw = p.read_bytes()
    p.write_bytes((1234).to_bytes(4, "big") + raw[4:])
    with pytest.raises(DataError, match="bad magic number 1234, expected 2049"):
        load_dataset("mnist", data_dir=folder)
    p.write_bytes(raw[:-5])
    with pytest.raises(DataError, match="does not match dimensions"):
        read_idx(p, 2049, 1)
    p.write_bytes(raw[:3])
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(p, 2049, 1)
    (folder / "t10k-images-idx3-ubyte").unlink()
    p.write_bytes(raw)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\[.gz\]: file not found"):
        load_dataset("mnist", data_dir=folder)


def test_gz_corrupt(tmp_path):
    folder = write_idx(tmp_path, gz=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_dataset("mnist", data_dir=folder)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


@pytest.mark.slow
def test_mnist1d_when_installed(tmp_path):
    pytest.importorskip("mnist1d")
    d = load_dataset("mnist1d", data_dir=tmp_path)
    assert d.x_train.shape[1] == 40 and (tmp_path / "mnist1d.npz").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_of_every_protocol_load_alike(tmp_path, protocol):
    ref = load_dataset("cifar10", data_dir=write_cifar(tmp_path / "p2"), flat=False)
    d = load_dataset("cifar10", data_dir=write_cifar(tmp_path / "p", protocol=protocol), flat=False)
    assert np.array_equal(d.x_train, ref.x_train) and np.array_equal(d.y_test, ref.y_test)


def test_arrays_are_rebuilt_from_raw_bytes_of_the_declared_size(tmp_path):
    class ZeroStrided:  # numpy.ndarray((200000, 3072), strides=(0, 0))
        def __reduce__(self):
            return (np.ndarray, ((200000, 3072), np.dtype(np.uint8), b"\0", 0, (0, 0)))

    path = tmp_path / "zs"
    path.write_bytes(pickle.dumps({b"data": ZeroStrided()}, protocol=2))
    assert len(path.read_bytes()) < 300
    with pytest.raises(DataError, match=r"refusing a direct numpy.ndarray\(...\) call"):
        restricted_load(path)
    fn, args, state = np.zeros((4, 4), np.uint8).__reduce__()

    class Short:  # declares (400, 400), holds 16 bytes
        def __reduce__(self):
            return (fn, args, (state[0], (400, 400), *state[2:]))

    path.write_bytes(pickle.dumps({b"a": Short()}, protocol=2))
    with pytest.raises(
        DataError,
        match=r"shape \(400, 400\) and dtype uint8 needs 160000 "
        "bytes, the file holds 16",
    ):
        restricted_load(path)
    path.write_bytes(pickle.dumps({b"a": np.zeros(3, dtype=[("f", "u1")])}, protocol=2))
    with pytest.raises(DataError, match="refusing"):
        restricted_load(path)


def test_labels_must_be_a_flat_list_of_ints(tmp_path):
    folder = write_cifar(tmp_path / "c")
    nested = [0, 1]
    for _ in range(32):
        nested = [nested, nested]  # 2^33 items behind a few hundred bytes
    for labels in (nested, [0, 1, True], [0, 1], [0, 1, 2, 3], [0.0, 1.0, 2.0]):
        (folder / "data_batch_1").write_bytes(
            pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}, protocol=2)
        )
        with pytest.raises(DataError, match=r"b'labels' must be a flat list of 3 integers"):
            load_dataset("cifar10", data_dir=folder)


def test_fewer_than_ten_training_samples_is_a_clear_error(tmp_path):
    folder = write_cifar(tmp_path / "c", n_per_batch=1)
    with pytest.raises(DataError, match=r"data_batch_\*: 5 training samples; at least 10"):
        load_dataset("cifar10", data_dir=folder)
    write_idx(tmp_path / "mnist", n=9, n_test=2)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: 9 training samples"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_dimensions_whose_product_wraps_name_the_file(tmp_path):
    dims = (1 << 22, 1 << 21, 1 << 21)
    assert np.prod(np.array(dims, dtype=np.int64)) == 0 and math.prod(dims) == 1 << 64
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(header)
    with pytest.raises(  # a plain file is measured against its header before any allocation
        DataError,
        match=f"{path}: size 16 bytes does not match dimensions "
        f"\\[4194304, 2097152, 2097152\\] \\({16 + (1 << 64)} bytes\\)",
    ):
        read_idx(path, 2051, 3)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(header))
    with pytest.raises(
        DataError, match=f"{gz} \\(dimensions \\[4194304, 2097152, 2097152\\]\\) needs about"
    ):
        read_idx(gz, 2051, 3)


def test_idx_gzip_is_inflated_no_further_than_its_header_declares(tmp_path):
    folder = write_idx(tmp_path, n=20, gz=True)
    p = folder / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw + bytes(10**6)))  # a megabyte more than declared
    with pytest.raises(DataError, match=r"size 29\+ bytes does not match dimensions \[20\]"):
        read_idx(p, 2049, 1)
    p.write_bytes(gzip.compress(raw[:-3]))
    with pytest.raises(DataError, match=r"size 25 bytes does not match dimensions \[20\]"):
        read_idx(p, 2049, 1)


def test_labels_are_class_indices_never_guessed():
    from proxnp.training.data import class_labels

    y = class_labels(np.array([0.0, 3.0, 9.0]), 10, "here")
    assert y.dtype == np.int64 and y.tolist() == [0, 3, 9]
    for bad, message in [
        (np.array([1.0, 3.7]), "here: labels must be whole numbers .*got 3.7 at position 1"),
        (np.array([-0.5, 1.0]), "got -0.5 at position 0"),
        (np.array([np.nan, 1.0]), "got nan at position 0"),
        (np.array([1e30]), r"labels must lie in 0..9, got 1e\+30..1e\+30"),
        (np.array([2**63 + 5], dtype=np.uint64), "labels must lie in 0..9"),
        (np.array([-1, 2]), "labels must lie in 0..9, got -1..2"),
        (np.array([True, False]), "labels must be integers, got dtype bool"),
        (np.zeros((2, 2), np.int64), r"labels must be a 1-D array, got shape \(2, 2\)"),
    ]:
        with pytest.raises(DataError, match=message):
            class_labels(bad, 10, "here")


def test_only_regular_files_are_read(tmp_path):
    import os

    fifo = tmp_path / "data_batch_1"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(DataError, match=f"{fifo}: a FIFO, not a regular file"):
        restricted_load(fifo)
    with pytest.raises(DataError, match="/dev/zero: a character device, not a regular file"):
        read_idx("/dev/zero", 2051, 3)
    with pytest.raises(DataError, match=f"{tmp_path}: a directory, not a regular file"):
        restricted_load(tmp_path)
    big = tmp_path / "big_batch"
    with open(big, "wb") as f:
        f.truncate(2 * 10_000 * 3072 + 1)  # sparse: one byte over the cap
    with pytest.raises(DataError, match="bytes a CIFAR-10 batch can hold"):
        restricted_load(big)


def test_a_huge_cifar_label_is_refused_before_any_cast(tmp_path):
    folder = write_cifar(tmp_path / "c", n_per_batch=20)
    batch = pickle.loads((folder / "data_batch_1").read_bytes())
    batch[b"labels"][7] = 10**30  # np.array(..., int64) would raise OverflowError
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="b'labels' must be a flat list of 20 integers in 0..9"):
        load_dataset("cifar10", data_dir=tmp_path / "c")
