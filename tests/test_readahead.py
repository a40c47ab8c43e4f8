"""The sequential detector (pure): grows on sequential reads, resets on seeks."""

from dffs.fs.readahead import SequentialDetector

KiB, MiB = 1024, 1024 * 1024


def detector():
    return SequentialDetector(initial_window=8 * MiB, max_window=64 * MiB)


def test_reading_from_the_start_prefetches_at_once_and_grows():
    d = detector()
    windows = [d.on_read(i * 256 * KiB, 256 * KiB) for i in range(6)]
    assert windows == [8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 64 * MiB, 64 * MiB]


def test_one_random_read_prefetches_nothing():
    d = detector()
    assert d.on_read(900 * MiB, 4 * KiB) == 0
    assert d.on_read(900 * MiB + 4 * KiB, 16 * KiB) == 0  # the kernel's readahead around it


def test_a_streak_elsewhere_starts_after_the_trigger():
    d = detector()
    got = [d.on_read(500 * MiB + i * 128 * KiB, 128 * KiB) for i in range(10)]
    assert got[:7] == [0] * 7  # under 1 MiB read so far
    assert got[7] == 8 * MiB and got[8] == 16 * MiB


def test_seek_resets_the_window():
    d = detector()
    for i in range(4):
        d.on_read(i * MiB, MiB)
    assert d.window == 64 * MiB
    assert d.on_read(300 * MiB, 4 * KiB) == 0
    assert d.window == 0


def test_slightly_out_of_order_reads_stay_sequential():
    d = detector()
    d.on_read(0, 128 * KiB)
    d.on_read(256 * KiB, 128 * KiB)  # arrives before 128K..256K
    assert d.on_read(128 * KiB, 128 * KiB) == 32 * MiB
