"""Many writers appending to one group of one local repository: no commit and no image is lost."""

import subprocess
import sys
import threading

import numpy as np

from maskbank.storage.image_arrays import write_images
from maskbank.storage.store import POOLED, POOLED_SCHEMA, Store

WRITERS = 3
TRANSACTIONS = 30

# A writer process: opens the store, says "ready", waits for "go" on stdin, then makes its transactions,
# alternating between Store.write_pooled and a hand-made Store.transact.
WRITER = r"""
import sys
import numpy as np
from maskbank.storage.image_arrays import write_images
from maskbank.storage.store import POOLED_SCHEMA, Store

location, writer, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def output(key, seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(0, 6))
    return Store.pooled_output(key, rng.standard_normal((k, 5)).astype(np.float32), rng.random(k).astype(np.float32),
                               rng.random(k).astype(np.float32), (10 + k, 20))

store = Store.open(location)
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    key, seed = f"w{writer}-{i:03d}", writer * 1000 + i
    if i % 2:
        written = store.write_pooled("shared", [output(key, seed)])
    else:
        written, snapshot = store.transact(
            lambda root: write_images(root, "pooled/shared", POOLED_SCHEMA, [output(key, seed)]), f"append {key}")
        assert snapshot is not None
    assert written == [key], written
print("done", flush=True)
"""


def expected_output(writer: int, i: int):
    rng = np.random.default_rng(writer * 1000 + i)
    k = int(rng.integers(0, 6))
    return Store.pooled_output(f"w{writer}-{i:03d}", rng.standard_normal((k, 5)).astype(np.float32),
                               rng.random(k).astype(np.float32), rng.random(k).astype(np.float32), (10 + k, 20))


def check_all_present(location, writers: int, transactions: int, initial_commits: int) -> None:
    store = Store.open(location, create=False)
    keys = [f"w{w}-{i:03d}" for w in range(writers) for i in range(transactions)]
    assert store.list_items(POOLED, "shared") == sorted(keys)
    for w in range(writers):
        for i in range(transactions):
            want = expected_output(w, i)
            assert store.has_item(POOLED, "shared", want.key, verify=True), want.key
            got = store.read_pooled("shared", want.key)
            for name, a in want.elements.items():
                np.testing.assert_array_equal(got[name], a)
    ds = store.open_xarray("pooled/shared")
    assert ds.sizes["image"] == len(keys)  # one row each: no row was written twice
    assert ds.sizes["proposal"] == sum(len(expected_output(w, i).elements["area"]) for w in range(writers)
                                       for i in range(transactions))
    ancestry = list(store.repo.ancestry(branch="main"))
    appends = [s for s in ancestry if s.message.startswith(("append ", "pooled "))]
    assert len(appends) == len(keys) and len(ancestry) == initial_commits + len(keys)


def append_from_processes(location: str, writers: int, transactions: int, timeout: float = 90) -> None:
    """``writers`` processes, started together, each making ``transactions`` appends to one group."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, location, str(w), str(transactions)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(writers)
    ]
    try:
        for p in procs:
            line = p.stdout.readline()
            assert line.strip() == "ready", p.stderr.read()
        for p in procs:  # all start together
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0 and out.strip() == "done", err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_processes_appending_to_one_group_lose_nothing(tmp_path):
    location = str(tmp_path / "store")
    store = Store.open(location)
    initial = len(list(store.repo.ancestry(branch="main")))
    append_from_processes(location, WRITERS, TRANSACTIONS)
    check_all_present(location, WRITERS, TRANSACTIONS, initial)


def test_threads_appending_to_one_group_lose_nothing(tmp_path):
    location = str(tmp_path / "store")
    shared = Store.open(location)
    initial = len(list(shared.repo.ancestry(branch="main")))
    threads, errors = 4, []
    start = threading.Barrier(threads)

    def work(writer: int) -> None:
        # writers 0 and 1 share one Store object; 2 and 3 open their own
        store = shared if writer < 2 else Store.open(location)
        start.wait()
        try:
            for i in range(TRANSACTIONS):
                out = expected_output(writer, i)
                if i % 2:
                    written = store.write_pooled("shared", [out])
                else:
                    written, _ = store.transact(
                        lambda root, out=out: write_images(root, "pooled/shared", POOLED_SCHEMA, [out]),
                        f"append {out.key}")
                assert written == [out.key], written
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    check_all_present(location, threads, TRANSACTIONS, initial)


# A process opening (creating) stores at agreed times: reads the start time from stdin, then opens
# each location at its own moment and writes one image to it.
OPENER = r"""
import sys, time
from maskbank.storage.store import Store

writer, locations = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
start = float(sys.stdin.readline())
for i, location in enumerate(locations):
    at = start + 0.6 * i
    time.sleep(max(0.0, at - time.time() - 0.02))
    while time.time() < at:
        pass
    try:
        store = Store.open(location)
        import numpy as np
        store.write_pooled("p", [Store.pooled_output(f"w{writer}", np.zeros((1, 2), np.float32), np.zeros(1, np.float32),
                                                     np.zeros(1, np.float32), (4, 4))])
        print("ok", flush=True)
    except Exception as e:
        print(f"{type(e).__name__}: {e}", flush=True)
"""


def test_processes_creating_one_store_at_once(tmp_path):
    import time

    openers, rounds = 4, 4
    locations = [str(tmp_path / f"store{i}") for i in range(rounds)]
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(w), *locations], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(openers)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        start = time.time() + 0.5
        for p in procs:
            p.stdin.write(f"{start}\n")
            p.stdin.flush()
        results = [p.communicate(timeout=60)[0].split("\n")[:rounds] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failures = [r for rs in results for r in rs if r != "ok"]
    assert not failures, failures
    for location in locations:
        assert Store.open(location, create=False).list_items(POOLED, "p") == [f"w{w}" for w in range(openers)]
