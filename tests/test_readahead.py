"""The sequential detector (pure): grows on sequential reads, resets on seeks."""

from dffs.fs.readahead import SequentialDetector

KiB, MiB = 1024, 1024 * 1024


def detector():
    return SequentialDetector(initial_window=8 * MiB, max_window=64 * MiB)


def test_reading_from_the_start_prefetches_at_once_and_grows_with_what_was_read():
    d = detector()
    windows = [d.on_read(i * 256 * KiB, 256 * KiB) for i in range(6)]
    assert windows == [8 * MiB] * 6  # at once, but no further ahead than the first window yet
    windows = [d.on_read(i * MiB, MiB) for i in range(2, 100)]
    assert windows[13] == 16 * MiB and windows[29] == 32 * MiB  # as far ahead as the streak has read
    assert max(windows) == windows[-1] == 64 * MiB


def test_one_random_read_prefetches_nothing():
    d = detector()
    assert d.on_read(900 * MiB, 4 * KiB) == 0
    assert d.on_read(900 * MiB + 4 * KiB, 16 * KiB) == 0  # the kernel's readahead around it


def test_a_streak_elsewhere_starts_after_the_trigger():
    d = detector()
    got = [d.on_read(500 * MiB + i * 128 * KiB, 128 * KiB) for i in range(70)]
    assert got[:63] == [0] * 63  # under 8 MiB read so far: a column chunk's worth prefetches nothing
    assert got[63] == 8 * MiB and got[69] == 8 * MiB + 6 * 128 * KiB


def test_a_few_mib_read_in_one_go_mid_file_prefetches_nothing():
    """One pread of a 4 MiB column chunk arrives as 32 sequential 128 KiB requests."""
    d = detector()
    assert d.on_read(300 * MiB - 64 * KiB, 64 * KiB) == 0  # the footer
    assert [d.on_read(40 * MiB + i * 128 * KiB, 128 * KiB) for i in range(32)] == [0] * 32


def test_seek_resets_the_window():
    d = detector()
    for i in range(80):
        d.on_read(i * MiB, MiB)
    assert d.window == 64 * MiB
    assert d.on_read(300 * MiB, 4 * KiB) == 0
    assert d.window == 0


def test_slightly_out_of_order_reads_stay_sequential():
    d = detector()
    d.on_read(0, 128 * KiB)
    d.on_read(256 * KiB, 128 * KiB)  # arrives before 128K..256K
    assert d.on_read(128 * KiB, 128 * KiB) == 8 * MiB
    assert d.next_offset == 384 * KiB
