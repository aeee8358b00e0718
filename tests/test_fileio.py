"""Recorded-signal files: round trips, WAV scaling, CSV header/column handling, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import wavfile

from pipeline.tools.fileio import SignalFileError, read_signal, read_signal_columns, write_signal


@pytest.fixture
def stereo():
    return np.random.default_rng(0).normal(size=(1000, 2)).astype(np.float32)


@pytest.mark.parametrize("ext", [".npy", ".wav", ".csv"])
def test_round_trip_is_exact(tmp_path, stereo, ext):
    path = tmp_path / f"sig{ext}"
    write_signal(path, stereo, 8000)
    x, rate = read_signal(path, sample_rate=None if ext == ".wav" else 8000.0)
    assert x.dtype == np.float32 and x.shape == stereo.shape
    np.testing.assert_array_equal(x, stereo)
    assert rate == 8000.0


@pytest.mark.parametrize("ext", [".npy", ".wav", ".csv"])
def test_mono_reads_as_one_channel(tmp_path, ext):
    mono = np.linspace(-1, 1, 50, dtype=np.float32)
    path = tmp_path / f"m{ext}"
    write_signal(path, mono, 100)
    x, _ = read_signal(path)
    assert x.shape == (50, 1)
    np.testing.assert_array_equal(x[:, 0], mono)


def test_rate_is_none_without_header_or_argument(tmp_path, stereo):
    write_signal(tmp_path / "a.npy", stereo)
    assert read_signal(tmp_path / "a.npy")[1] is None


def test_int16_wav_is_scaled_and_rate_read_from_header(tmp_path):
    pcm = np.array([[0, -32768], [16384, 32767], [-16384, 1]], dtype=np.int16)
    wavfile.write(tmp_path / "pcm.wav", 44100, pcm)
    x, rate = read_signal(tmp_path / "pcm.wav")
    assert rate == 44100.0 and x.dtype == np.float32
    np.testing.assert_allclose(x, pcm / 32768.0)
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_uint8_and_int32_wav_scaling(tmp_path):
    wavfile.write(tmp_path / "u8.wav", 8000, np.array([0, 128, 255], dtype=np.uint8))
    np.testing.assert_allclose(read_signal(tmp_path / "u8.wav")[0][:, 0], [-1.0, 0.0, 127 / 128])
    wavfile.write(tmp_path / "i32.wav", 8000, np.array([-(2**31), 0, 2**30], dtype=np.int32))
    np.testing.assert_allclose(read_signal(tmp_path / "i32.wav")[0][:, 0], [-1.0, 0.0, 0.5])


def test_wav_header_rate_conflicting_with_argument_is_refused(tmp_path):
    wavfile.write(tmp_path / "a.wav", 8000, np.zeros(10, np.int16))
    with pytest.raises(ValueError, match="8000 Hz"):
        read_signal(tmp_path / "a.wav", sample_rate=1000.0)
    assert read_signal(tmp_path / "a.wav", sample_rate=8000.0)[1] == 8000.0


def test_nab_style_csv_yields_the_value_column(tmp_path):
    path = tmp_path / "nab.csv"
    path.write_text(
        "timestamp,value\n"
        "2014-04-01 00:00:00,20.5\n"
        "2014-04-01 00:05:00,21\n"
        "2014-04-01 00:10:00,-3.25e1\n"
    )
    x, rate = read_signal(path, sample_rate=1 / 300)
    assert x.shape == (3, 1)
    np.testing.assert_array_equal(x[:, 0], [20.5, 21.0, -32.5])
    assert rate == pytest.approx(1 / 300)


def test_numeric_time_column_is_dropped_and_column_picks_by_name(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text("time,a,b\n0.0,1,10\n0.1,2,20\n")
    np.testing.assert_array_equal(read_signal(path)[0], [[1, 10], [2, 20]])
    np.testing.assert_array_equal(read_signal(path, column="b")[0], [[10], [20]])
    with pytest.raises(ValueError, match="no column 'c'.*time, a, b"):
        read_signal(path, column="c")


def test_headerless_csv(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("1,2\n3,4\n\n5,6\n")
    np.testing.assert_array_equal(read_signal(path)[0], [[1, 2], [3, 4], [5, 6]])


def test_bad_cell_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,value\n2014-01-01,1.0\n2014-01-02,2.0\n2014-01-03,oops\n")
    with pytest.raises(ValueError) as err:
        read_signal(path)
    msg = str(err.value)
    assert "bad.csv" in msg and "line 4" in msg and "'value'" in msg and "oops" in msg


def test_empty_cell_and_ragged_row_are_errors(tmp_path):
    (tmp_path / "e.csv").write_text("a,b\n1,2\n3,\n")
    with pytest.raises(ValueError, match="line 3, column 2"):
        read_signal(tmp_path / "e.csv")
    (tmp_path / "r.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3"):
        read_signal(tmp_path / "r.csv")


def test_object_npy_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([1, "x", None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        read_signal(tmp_path / "obj.npy")


def test_bad_shape_and_non_finite_are_refused(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        read_signal(tmp_path / "cube.npy")
    np.save(tmp_path / "nan.npy", np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="NaN"):
        read_signal(tmp_path / "nan.npy")


def test_unknown_extension_lists_supported(tmp_path):
    (tmp_path / "x.mp3").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.npy, \.wav, \.csv"):
        read_signal(tmp_path / "x.mp3")
    with pytest.raises(ValueError, match=r"\.npy, \.wav, \.csv"):
        write_signal(tmp_path / "y.flac", np.zeros(3), 100)


def test_wav_write_needs_whole_rate(tmp_path):
    with pytest.raises(ValueError, match="sample rate"):
        write_signal(tmp_path / "a.wav", np.zeros(3, np.float32), 99.5)


def test_csv_in_csv_out_keeps_the_column_names(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('time,"pump, inlet",outlet\n0,1.5,10\n1,2.5,20\n')
    x, rate, names = read_signal_columns(src)
    assert names == ["pump, inlet", "outlet"] and rate is None
    write_signal(tmp_path / "out.csv", x * 2, names=names)
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == '"pump, inlet",outlet'
    y, _, names_back = read_signal_columns(tmp_path / "out.csv")
    assert names_back == names
    np.testing.assert_array_equal(y, x * 2)
    assert read_signal_columns(src, column="outlet")[2] == ["outlet"]


def test_csv_without_header_has_no_names_and_gets_the_default_header(tmp_path):
    (tmp_path / "plain.csv").write_text("1,2\n3,4\n")
    x, _, names = read_signal_columns(tmp_path / "plain.csv")
    assert names is None
    write_signal(tmp_path / "out.csv", x, names=names)
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == "ch0,ch1"
    with pytest.raises(SignalFileError, match="1 column name"):
        write_signal(tmp_path / "bad.csv", x, names=["only"])


def test_unreadable_files_raise_the_file_error_naming_the_file(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(SignalFileError, match="junk.wav: not a readable WAV file"):
        read_signal(tmp_path / "junk.wav")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(SignalFileError, match="bin.csv: not a UTF-8 text file"):
        read_signal(tmp_path / "bin.csv")
    assert issubclass(SignalFileError, ValueError)  # callers catching ValueError keep working
