import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.wire.codec import (
    H_CHANNELS, H_FORMAT, H_INDEX, H_MODEL, H_RATE, DecodeError, decode_chunk, encode_chunk,
)


@given(
    arrays(np.float32, st.tuples(st.integers(1, 64), st.integers(1, 4)),
           elements=st.floats(-1e6, 1e6, width=32)),
    st.integers(0, 2**63 - 1),
    st.sampled_from([1.0, 360.0, 16000.0, 44100.0, 0.2]),
)
def test_round_trip(x, index, rate):
    key, value, headers = encode_chunk("s/ü", index, rate, x, model="v3")
    if index + x.shape[0] > 2**63 - 1:  # the chunk's last sample index would not fit in int64
        with pytest.raises(DecodeError) as e:
            decode_chunk(key, value, headers)
        assert e.value.reason == "invalid_header" and "exceeds 2^63-1" in str(e.value)
        return
    c = decode_chunk(key, value, headers)
    assert (c.stream, c.index, c.rate, c.model) == ("s/ü", index, rate, "v3")
    np.testing.assert_array_equal(c.samples, x)
    assert c.end == index + x.shape[0]


def test_decode_is_zero_copy_and_little_endian():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    key, value, headers = encode_chunk("a", 0, 100, x)
    assert value == x.astype("<f4").tobytes()  # interleaved frames, little-endian
    c = decode_chunk(key, value, headers)
    assert not c.samples.flags.owndata and not c.samples.flags.writeable
    assert np.shares_memory(c.samples, np.frombuffer(value, np.uint8))


def replace(headers, name, value):
    return [(n, value if n == name else v) for n, v in headers]


@pytest.mark.parametrize(
    "mutate,reason,fragment",
    [
        (lambda k, v, h: (None, v, h), "invalid_key", "no key"),
        (lambda k, v, h: (b"\xff\xfe", v, h), "invalid_key", "UTF-8"),
        (lambda k, v, h: (k, v, [x for x in h if x[0] != H_RATE]), "missing_header", H_RATE),
        (lambda k, v, h: (k, v, replace(h, H_FORMAT, b"2")), "unsupported_format", "version 2"),
        (lambda k, v, h: (k, v, replace(h, H_INDEX, b"-1")), "invalid_header", H_INDEX),
        (lambda k, v, h: (k, v, replace(h, H_INDEX, b"1e3")), "invalid_header", "decimal integer"),
        (lambda k, v, h: (k, v, replace(h, H_RATE, b"nan")), "invalid_header", H_RATE),
        (lambda k, v, h: (k, v, replace(h, H_RATE, b"0")), "invalid_header", H_RATE),
        (lambda k, v, h: (k, v, replace(h, H_CHANNELS, b"3")), "bad_length", "3-channel"),
        (lambda k, v, h: (k, v, replace(h, H_CHANNELS, b"0")), "invalid_header", H_CHANNELS),
        (lambda k, v, h: (k, v[:-1], h), "bad_length", "whole number"),
        (lambda k, v, h: (k, b"", h), "bad_length", "positive"),
        (lambda k, v, h: (k, None, h), "bad_length", "tombstone"),
        (lambda k, v, h: (k, v, h + [(H_INDEX, b"0")]), "invalid_header", "more than once"),
    ],
)
def test_each_bad_input_names_its_problem(mutate, reason, fragment):
    key, value, headers = encode_chunk("s", 5, 1000, np.zeros((4, 2), np.float32))
    with pytest.raises(DecodeError) as err:
        decode_chunk(*mutate(key, value, headers))
    assert err.value.reason == reason
    assert fragment in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(bad):
    x = np.zeros((10, 1), np.float32)
    x[4] = bad
    with pytest.raises(DecodeError, match="1 NaN/Inf") as err:
        decode_chunk(*encode_chunk("s", 0, 10, x))
    assert err.value.reason == "non_finite"


def test_size_limit():
    k, v, h = encode_chunk("s", 0, 10, np.zeros(101, np.float32))
    assert decode_chunk(k, v, h, max_frames=101).frames == 101
    with pytest.raises(DecodeError, match="101 frames, the limit is 100") as err:
        decode_chunk(k, v, h, max_frames=100)
    assert err.value.reason == "too_large"


def test_output_headers_carry_model_version():
    _, _, h = encode_chunk("s", 7, 360, np.zeros(3, np.float32), model="v12")
    assert dict(h)[H_MODEL] == b"v12" and dict(h)[H_INDEX] == b"7" and dict(h)[H_RATE] == b"360"


@pytest.mark.parametrize(
    "name,raw",
    [(H_INDEX, v) for v in (b" 12", b"12 ", b"+12", b"1_000", b"12\n", b"012", b"00", b"1e3", b"0x10", b"",
                            "١٢".encode(), b"12.0", b"9223372036854775808", b"99999999999999999999")]
    + [(H_FORMAT, v) for v in (b"01", b" 1", b"+1", b"1\n")]
    + [(H_CHANNELS, v) for v in (b"01", b"+1", b"1_0", b" 1")]
    + [(H_RATE, v) for v in (b" 1000", b"+1000", b"1_000", b"1000\n", b"inf", b"nan", b"-5", b"1000.", b".5",
                             b"0x10", b"1e", b"1e1000", b"0", b"0.0", b"1" * 40)],
)
def test_lenient_header_text_is_rejected(name, raw):
    """The header grammar is strict: what Python's int()/float() would forgive is invalid_header."""
    key, value, headers = encode_chunk("s", 5, 1000, np.zeros((4, 1), np.float32))
    with pytest.raises(DecodeError) as err:
        decode_chunk(key, value, replace(headers, name, raw))
    assert err.value.reason in ("invalid_header", "unsupported_format"), err.value
    if name != H_FORMAT:
        assert err.value.reason == "invalid_header"


@pytest.mark.parametrize("raw,rate", [(b"1000", 1000.0), (b"0.2", 0.2), (b"44100.5", 44100.5),
                                      (b"1e-05", 1e-05), (b"1.5e-07", 1.5e-07), (b"150000000000000000000", 1.5e20), (b"360", 360.0)])
def test_rate_grammar_accepts_what_the_encoder_writes(raw, rate):
    key, value, headers = encode_chunk("s", 0, rate, np.zeros((2, 1), np.float32))
    assert dict(headers)[H_RATE] == raw
    assert decode_chunk(key, value, headers).rate == rate


def test_index_plus_frames_must_fit_in_int64():
    """The reported poison pill: index 2^63-1 with one frame decoded, then crashed the windowing."""
    top = 2**63 - 1
    k, v, h = encode_chunk("s", top - 4, 10, np.zeros(4, np.float32))
    assert decode_chunk(k, v, h).end == top  # the last sample index is 2^63-2: fine
    for index, frames in ((top, 1), (top - 3, 4)):
        k, v, h = encode_chunk("s", index, 10, np.zeros(frames, np.float32))
        with pytest.raises(DecodeError, match="exceeds 2") as err:
            decode_chunk(k, v, h)
        assert err.value.reason == "invalid_header"
